"""Every touch of Lightning's and Hydra's private internals, one function each (nothing else reaches past them).

tests/test_compat.py exercises each on a real Trainer or launcher, so a release that moves one fails a test, not
a run; pyproject.toml pins ``lightning`` to the minor version tested. Light modules import this in a function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import Checkpoint, RichProgressBar


def epoch_index(trainer: Any) -> int:
    """The whole epochs the fit loop has processed: a resumed checkpoint's by ``on_train_start`` (with
    ``max_steps`` set, ``current_epoch`` lags one behind until Lightning replays the checkpoint's epoch end)."""
    return trainer.fit_loop.epoch_progress.current.processed


def fit_restarting(trainer: Any) -> bool:
    """Whether the fit loop is replaying a restored checkpoint's state (its last epoch end, on a resume)."""
    return trainer.fit_loop.restarting


def batches_trained(trainer: Any) -> int:
    """The training batches completed in the current epoch."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def optimizer_step_progress(trainer: Any) -> Any:
    """Lightning's counter of manual-optimization steps (``trainer.global_step`` reads it); the fast path's
    engine steps the raw optimizer and counts its steps here (``increment_ready``/``increment_completed``)."""
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress


def hparams_name(module: Any) -> str | None:
    """The name ``save_hyperparameters`` gave the module's hyperparameters (Lightning stores it in a checkpoint
    as ``hparams_name``); None if it saved none."""
    return getattr(module, "_hparams_name", None)


def tensorboard_file_writer(logger: Any) -> Any:
    """The ``FileWriter`` under a TensorBoardLogger's ``SummaryWriter``, for writing raw summaries and events."""
    return logger.experiment._get_file_writer()


class AfterModuleCallback(Checkpoint):
    """A callback whose ``on_train_epoch_end`` runs after the LightningModule's (where the epoch's metrics are
    computed) and after every callback that is not a ``Checkpoint``: Lightning moves ``Checkpoint`` subclasses
    to the end of the callback list, keeping their order (``CallbackConnector._reorder_callbacks``)."""


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar with its epochs counted as the console line counts them, from 1: "Epoch 1/3"
    beside "Epoch: 1, ..." (Lightning's says "Epoch 0/2"). Its private ``_get_train_description`` makes the text
    every time the bar is (re)made; set after it, a public hook's text would follow a first drawing of Lightning's."""

    def _get_train_description(self, current_epoch: int) -> str:
        last = self.trainer.max_epochs if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0 else None
        text = f"Epoch {current_epoch + 1}" + (f"/{last}" if last else "")  # max_epochs=-1: no end
        return f"{text:{len(self.validation_description)}}"  # as long as "Validation", as Lightning's: no jumps


@contextmanager
def hydra_ddp_child_command(replacement: Callable[[int], tuple[list[str], str]]) -> Iterator[None]:
    """Lightning's DDP launcher runs ``replacement(local_rank) -> (command, cwd)`` to start each child process
    of a Hydra job, instead of its own ``_hydra_subprocess_cmd``, until the block ends."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = replacement
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original
