"""Packages for setuptools (everything else is in pyproject.toml).

The shipped pair stays in the repository's top-level checkpoints/ folder and installs as package data under
refiner/shipped_checkpoints (4.8 MB), so an installed copy has its default models; `refiner.shipped` finds
either place. pyproject.toml alone cannot both discover packages and map one from another folder.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

SHIPPED = "refiner.shipped_checkpoints"
folders = sorted(p.name for p in Path(__file__).resolve().parent.joinpath("checkpoints").iterdir()
                 if (p / "config.json").is_file())
shipped = [SHIPPED] + [f"{SHIPPED}.{name}" for name in folders]

packages = find_namespace_packages(include=["refiner", "refiner.*", "refiner_cli", "analysis", "analysis.*", "app",
                                            "app.*"], exclude=["*.__pycache__"])
package_data = {"refiner": ["py.typed"], "analysis": ["py.typed"], "app": ["py.typed", "chart_component.js"], SHIPPED: ["README.md"]}
package_data.update({f"{SHIPPED}.{name}": ["config.json", "metrics.json", "model.safetensors"] for name in folders})

# package-data must not be set in pyproject.toml as well: setuptools would let it replace this one.
setup(packages=packages + shipped, package_dir={SHIPPED: "checkpoints"}, package_data=package_data)
