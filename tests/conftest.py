"""Shared fixtures: compose configs through Hydra's API, run the real CLI in a subprocess, fake data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cifar_lab.train import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

# Small, quick settings for CLI runs on CPU. The synthetic set stays CIFAR-shaped.
FAST = [
    "data=synthetic", "data.n_train=256", "data.n_test=128", "data.batch_size=64",
    "data.num_workers=0", "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(cwd: Path, *overrides: str, module: str = "cifar_lab", timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m cifar_lab <overrides>`` in ``cwd``; outputs land under ``cwd/outputs``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(cwd / "data"), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_dirs(cwd: Path) -> list[Path]:
    """Every run directory (one holding summary.json) under ``cwd/outputs``."""
    return sorted(p.parent for p in (cwd / "outputs").rglob("summary.json"))


def load_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def cfg_factory():
    return compose_cfg
