"""conf/ ships inside the wheel: pyproject's hand-made package list matches the tree."""

from __future__ import annotations

import pytest

from cifar_lab.configs import CONF_DIR, find_conf_dir
from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_package_list_covers_every_package_and_config_folder():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cifar_lab").rglob("__init__.py")}
    conf = {"cifar_lab.conf"} | {
        "cifar_lab.conf." + ".".join(d.relative_to(REPO / "conf").parts)
        for d in (REPO / "conf").rglob("*")
        if d.is_dir()
    }
    assert listed == code | conf


def test_conf_is_found_in_the_checkout():
    assert find_conf_dir() == REPO / "conf" and CONF_DIR == str(REPO / "conf")
