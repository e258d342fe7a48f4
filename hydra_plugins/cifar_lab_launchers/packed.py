"""``hydra/launcher=packed``: the jobs of a multirun that can share one forward pass train as one model.

The logic is in cifar_lab/packing/launch.py (grouping, one process per pack, single jobs in this
process as the basic launcher runs them); Hydra loads launchers only from this namespace package.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn

from cifar_lab.launchers import launch_basic
from cifar_lab.packing.grouping import check_max_pack, check_pack
from cifar_lab.packing.launch import run_packed
from hydra_plugins.cifar_lab_launchers.launchers import BasicLauncher


class PackedLauncher(BasicLauncher):
    """Packs of up to ``max_pack`` jobs, each trained in its own process; other jobs one by one, here. With
    ``pack=false``, or where packing measured slower (``auto``), a pack's jobs run one by one too. SIGTERM stops the
    running pack or job and ends the sweep with its summary (exit 143), as the sequential launcher's (whose
    set-up this shares) does."""

    def __init__(self, max_pack: int = 16, pack: str | bool = "auto") -> None:
        super().__init__()
        self.max_pack = check_max_pack(max_pack)
        self.pack = check_pack(pack)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launch_basic(self, job_overrides, initial_job_idx, run_packed)
