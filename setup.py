"""The one build step pyproject.toml cannot express: ship the top-level conf/ inside the wheel as cifar_lab/conf.

conf/ stays at the top of the repository (Hydra's layout); cifar_lab/configs.py finds it there in a
checkout or an editable install, and as cifar_lab/conf in an installed wheel. Everything else about
the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads conf/ from the checkout
            return
        target = Path(self.build_lib) / "cifar_lab" / "conf"
        shutil.copytree(
            Path(__file__).parent / "conf",
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )


setup(cmdclass={"build_py": BuildPyWithConf})
