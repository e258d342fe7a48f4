"""A quiet, useful console: each message once, no adverts, and only the warnings a user can act on.

Lightning gives its top-level ``lightning`` logger a console handler of its own *and* lets records
propagate to the root logger, where Hydra's handler prints them again: every Lightning message
appeared twice. Its "💡 Tip" lines advertise other products, not this run. The warnings filtered
below come from dependencies and cannot be fixed here; each says why it is filtered.
"""

from __future__ import annotations

import logging
import sys
import warnings

ADVERT = "💡 Tip"
# Lightning's Ctrl-C line (logged with a leading newline, so the console showed a bare "[INFO] "): the run's own
# paragraph (errors.print_outcome) says the same, and how to continue.
CTRL_C = "Detected KeyboardInterrupt"


class FileHandler(logging.FileHandler):
    """A run's log file (``train.log``). A line the disk refuses (full, read-only) is dropped: it still reached
    the console, and the run or sweep reports the disk in one paragraph; Python's default would print a
    traceback for every line logged after the disk filled."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


class NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith((ADVERT, CTRL_C))


def filter_warnings() -> None:
    """Dependency warnings that say nothing about the user's run (safe to call more than once)."""
    # Lightning 2.6 calls torch's LeafSpec, which torch 2.14 deprecates: a Lightning-internal detail.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    # conf/hydra/launcher/joblib.yaml deliberately replaces the joblib plugin's config of the same name (with
    # cifar_lab's launcher); Hydra 1.3 then merges it with the plugin's schema and warns on every start. The
    # message starts with a newline, hence (?s).
    warnings.filterwarnings(
        "ignore", message=r"(?s).*is validated against ConfigStore schema with the same name", category=UserWarning
    )
    # A resume may drop a user's callback (conf/callbacks, docs/resume.md); ours are always there.
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks", category=UserWarning)
    # A resumed run continues in its own checkpoints/ folder on purpose (rundir.RunDir guards against reuse).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning)


def quiet_lightning() -> None:
    """Call after Lightning is imported: one handler (Hydra's, via the root logger) and no adverts."""
    logging.getLogger("lightning").handlers.clear()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoAdverts) for f in logger.filters):
            logger.addFilter(NoAdverts())
