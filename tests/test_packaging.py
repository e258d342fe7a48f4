"""conf/ is found in a checkout (a wheel ships it as cifar_lab/conf: .ci/run builds one and runs it from /tmp)."""

from __future__ import annotations

from cifar_lab.configs import CONF_DIR, find_conf_dir
from tests.conftest import REPO


def test_conf_is_found_in_the_checkout():
    assert find_conf_dir() == REPO / "conf" and CONF_DIR == str(REPO / "conf")


def test_hydra_finds_cifar_labs_launchers():
    """Hydra loads launchers only from its hydra_plugins namespace; ours must be discoverable there."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    names = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)}
    assert "hydra_plugins.cifar_lab_launchers.launchers.JoblibLauncher" in names
    assert "hydra_plugins.cifar_lab_launchers.launchers.LocalLauncher" in names
    assert "hydra_plugins.cifar_lab_launchers.launchers.BasicLauncher" in names
    assert "hydra_plugins.cifar_lab_launchers.packed.PackedLauncher" in names
