"""cifar_lab's Optuna sweeper (``hydra/sweeper=optuna_search``): Hydra's, except that a search in which no trial
completed (every one failed or diverged) ends with the sweep summary and one paragraph, not with a traceback
from Optuna's ``study.best_trial`` ("Record does not exist"). Hydra loads sweepers only from this namespace."""

from __future__ import annotations

import logging
from typing import Any

from cifar_lab.sweep import completed_trials

log = logging.getLogger("cifar_lab")

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _Optuna
except ImportError:  # the sweep extra is not installed
    _Optuna = None

if _Optuna is not None:

    class OptunaSweeper(_Optuna):
        """Hydra's Optuna sweeper; a search without a completed trial ends as a sweep whose jobs all failed."""

        def sweep(self, arguments: list[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError:  # study.best_trial of a study without a completed trial
                storage, name = getattr(self.sweeper, "storage", None), getattr(self.sweeper, "study_name", None)
                if storage is None or name is None or completed_trials(str(storage), str(name)) != 0:
                    raise
                log.error(
                    "no trial of Optuna study %r completed (each failed or diverged: see the sweep summary), so it "
                    "has no best parameters yet; fix the cause, e.g. narrow the optimizer.lr range, and run the same "
                    "command again: the study keeps these trials as FAIL",
                    name,
                )
                return None
