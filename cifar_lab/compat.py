"""Every touch of Lightning's and Hydra's private internals, one function each.

(Part P's copy: the functions its branch uses, with part C's names and bodies; part C's compat.py,
with its tests in tests/test_compat.py, is the one to keep when merging.)
"""

from __future__ import annotations

from typing import Any


def epoch_index(trainer: Any) -> int:
    """The whole epochs the fit loop has processed: a resumed checkpoint's by ``on_train_start`` (with
    ``max_steps`` set, ``current_epoch`` lags one behind until Lightning replays the checkpoint's epoch end)."""
    return trainer.fit_loop.epoch_progress.current.processed


def hparams_name(module: Any) -> str | None:
    """The name ``save_hyperparameters`` gave the module's hyperparameters (Lightning stores it in a checkpoint
    as ``hparams_name``); None if it saved none."""
    return getattr(module, "_hparams_name", None)


def tensorboard_file_writer(logger: Any) -> Any:
    """The ``FileWriter`` under a TensorBoardLogger's ``SummaryWriter``, for writing raw summaries and events."""
    return logger.experiment._get_file_writer()
