"""Resume: which checkpoint a run continues from, checked before any file of the run is rewritten.

Light (no torch import), so that a refused resume is reported at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from cifar_lab.errors import UserError

log = logging.getLogger("cifar_lab")

RESUME_MODES = (False, True, "auto")
# Overrides that may differ between a run and its resumption: they do not change what is computed.
RESUME_MAY_CHANGE = (
    "resume",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
)


def result_overrides(overrides: list[str]) -> set[str]:
    """The overrides that change what a run computes (all but RESUME_MAY_CHANGE)."""
    return {o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RESUME_MAY_CHANGE}


def previous_overrides(run_dir: Path) -> list[str] | None:
    """The overrides recorded in the run directory's summary.json, or None when it has none."""
    try:
        return list(json.loads((run_dir / "summary.json").read_text())["overrides"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_path(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> str | None:
    """The checkpoint ``trainer.fit`` continues from, or None to start afresh; UserError if it cannot."""
    mode = cfg.get("resume", False)
    if mode not in RESUME_MODES:
        raise UserError(f"resume must be false, true or auto, got {mode!r}.")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not mode:
        return None
    if not ckpt.is_file():
        if mode == "auto":
            log.info("resume=auto: no %s yet, starting from scratch", ckpt)
            return None
        raise UserError(
            f"resume=true but there is no checkpoint {ckpt}. Pass the directory of the run to continue with "
            "hydra.run.dir=<that run's directory> (the one holding checkpoints/last.ckpt), or use resume=auto "
            "to start from scratch when there is nothing to resume."
        )
    previous = previous_overrides(run_dir)
    if previous is not None:
        before, now = result_overrides(previous), result_overrides(overrides)
        if before != now:
            raise UserError(
                f"{run_dir} was started with a different command: only there {sorted(before - now) or 'nothing'}; "
                f"only here {sorted(now - before) or 'nothing'}. Resume with the original run's overrides plus "
                f"resume=true (only {', '.join(RESUME_MAY_CHANGE[1:])} may change)."
            )
    return str(ckpt)
