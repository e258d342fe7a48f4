"""The run lifecycle's shared decisions: one rank-zero check for every writer of a run's files."""

from __future__ import annotations

import subprocess
import sys

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cifar_lab.summary import is_rank_zero
from tests.conftest import REPO


def test_one_rank_zero_check_follows_lightning_once_it_is_imported(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what a DDP strategy sets on a process that is not rank 0
    assert not is_rank_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert is_rank_zero()


def test_one_rank_zero_check_reads_the_environment_before_lightning_is_imported():
    code = ("import os, sys; os.environ['LOCAL_RANK'] = '1'; from cifar_lab.summary import is_rank_zero; "
            "assert 'lightning' not in sys.modules; print(is_rank_zero())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
