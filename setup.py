"""Package discovery: every folder with an __init__.py under the mapped top-level folders is installed, so a
new ``pipelines/<domain>/`` cannot be left out of a built wheel. Metadata lives in pyproject.toml."""
from pathlib import Path

from setuptools import setup

ROOTS = {"mtp": "mtp", "mtp.backbones": "backbones", "mtp.kernels": "kernels",
         "mtp.pipelines": "pipelines", "mtp.datasets": "datasets"}


def discover() -> list[str]:
    here = Path(__file__).parent
    packages = []
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder).parts
            packages.append(".".join((name, *rel)))
    return packages


setup(packages=discover(), package_dir=ROOTS)
