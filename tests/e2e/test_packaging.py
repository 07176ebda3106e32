"""The project installs like a package: requirements.txt agrees with pyproject.toml, and a built wheel, installed
into a fresh virtual environment, runs ``refiner models`` and ``refiner analyze`` on the shipped pair from a
folder outside the repository (so nothing is imported from the source tree)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Dict, List

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import refiner

ROOT = Path(__file__).resolve().parents[2]
# What a wheel is built from (copied, so the build writes nothing into the checkout).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "refiner", "refiner_cli", "analysis", "app", "checkpoints")


def _pyproject() -> Dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement_lines(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_requirements_txt_lists_exactly_the_declared_dependencies_and_extras() -> None:
    project = _pyproject()["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    listed = _requirement_lines((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    assert sorted(listed) == sorted(declared), "requirements.txt and pyproject.toml disagree"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+>=[0-9][0-9.]*", r) for r in declared), "lower bounds only"
    assert set(project["optional-dependencies"]) >= {"hf", "export", "dev"}


def test_one_version() -> None:
    assert "version" not in _pyproject()["project"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "refiner.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", refiner.__version__)


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    return next(dist.glob("*.whl"))


@pytest.mark.slow
def test_installed_wheel_runs_models_and_analyze_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
                                     .decode())
    requires = metadata.get_all("Requires-Dist")
    assert metadata["Version"] == refiner.__version__
    assert "torch>=2.4" in requires and any(r.startswith("transformers") and 'extra == "hf"' in r for r in requires)
    assert {"refiner/py.typed", "refiner/shipped_checkpoints/vanilla/model.safetensors",
            "refiner/shipped_checkpoints/refined/config.json", "app/main.py", "app/entries/compare.py"} <= names

    # A fresh venv that sees this environment's packages (torch included, not installed again) through a
    # .pth line; .pth files inside that folder are not processed, so the checkout's editable install is not.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REFINER_APP_CHECKPOINTS")}
    # --no-index: every declared dependency must already be satisfied here, so nothing is downloaded.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)], check=True, env=env,
                   capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "images").mkdir(parents=True)
    from PIL import Image
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(elsewhere / "images" / "noise.png")

    where = subprocess.run([str(python), "-c", "import refiner, analysis, app; "
                            "print(refiner.__file__, analysis.__file__, app.__file__, refiner.__version__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where[:3]), where
    assert where[3] == refiner.__version__

    refiner_command = str(venv / "bin" / "refiner")
    models = subprocess.run([refiner_command, "models"], cwd=elsewhere, env=env, check=True, capture_output=True,
                            text=True)
    assert "refined_vit_mini_patch6_48" in models.stdout.split()
    assert str(site / "refiner" / "shipped_checkpoints") in models.stderr and "refined, vanilla" in models.stderr

    analyze = subprocess.run([refiner_command, "analyze", "--model", "vanilla", "--model", "refined", "--images",
                              "images", "--out", "out", "--formats", "html", "--n-boot", "50", "--no-progress"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    manifest = (elsewhere / "out" / "manifest.json").read_text(encoding="utf-8")
    assert str(site / "refiner" / "shipped_checkpoints" / "vanilla") in manifest
    assert (elsewhere / "out" / "tables").is_dir()
