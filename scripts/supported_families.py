"""Print the README's table of attention families that capture supports, generated from the family tests.

Runs tests/refiner/test_capture_families.py and tests/refiner/test_capture_hf.py (the per-family maps test:
maps equal to the library's eager maps, output unchanged, no hook left, geometry right) and lists, per
family of `refiner.capture_adapters.SUPPORTED_FAMILIES`, the models whose test passed; a family with a
failing or skipped model says so. Nothing is typed by hand.

    PYTHONPATH=$PWD .venv/bin/python scripts/supported_families.py > /tmp/families.md
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refiner.capture_adapters import SUPPORTED_FAMILIES  # noqa: E402

TESTS = ("tests/refiner/test_capture_families.py::test_family_maps_equal_the_eager_reference_and_leave_the_model_as_it_was",
         "tests/refiner/test_capture_hf.py::test_hf_maps_equal_transformers_eager_attention",
         "tests/refiner/test_capture.py::test_capture_works_for_every_registered_name")
OWN_PREFIXES = ("refined_", "refiner_vit_")  # registered names built from this project's attention layers


def run_tests() -> List[Tuple[str, str]]:
    """(test id in brackets, outcome) for every parametrised family test."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *TESTS], cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        results = []
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            param = name[name.index("[") + 1:-1] if "[" in name else name
            outcome = "passed"
            if case.find("skipped") is not None:
                outcome = "skipped"
            elif case.find("failure") is not None or case.find("error") is not None:
                outcome = "FAILED"
            results.append((param, outcome))
        return results


def family_of(param: str) -> Tuple[str, str]:
    """(family, model) from a test id: "rotary-eva02_tiny_patch14_224[-note]", a transformers class name, or
    a registered name of `refiner.list_models()`."""
    for family in sorted(SUPPORTED_FAMILIES, key=len, reverse=True):
        if param.startswith(family + "-"):
            model, _, note = param[len(family) + 1:].partition("-")
            return family, model + (f" ({note.replace('_', ' ')})" if note else "")
    if param[:1].isupper():
        return "transformers", param
    return ("own" if param.startswith(OWN_PREFIXES) else "timm"), param


def main() -> None:
    models: Dict[str, List[str]] = defaultdict(list)
    for param, outcome in run_tests():
        family, model = family_of(param)
        name, _, note = model.partition(" ")
        label = f"`{name}`" + (f" {note}" if note else "") + ("" if outcome == "passed" else f" ({outcome})")
        if label not in models[family]:
            models[family].append(label)
    models["class-attention"] = models.get("class-attention") or [
        f"{m} (class-attention blocks)" for m in models.get("talking-heads", [])]
    print("| Family | Attention layers | Models tested (random weights; the per-family tests at non-square sizes) |")
    print("|---|---|---|")
    for family, description in SUPPORTED_FAMILIES.items():
        print(f"| {family} | {description} | {', '.join(models.get(family, [])) or 'no test ran'} |")


if __name__ == "__main__":
    main()
