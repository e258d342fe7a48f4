"""``python -m cifar_lab``: the Hydra entry point and the exit policy; the run itself is :mod:`cifar_lab.lifecycle`."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cifar_lab.configs import CONF_DIR
from cifar_lab.console import filter_warnings
from cifar_lab.distributed import ddp_job_scope, placement
from cifar_lab.errors import EXIT_OK, EXIT_USER_ERROR, UserError, outcome_of, print_outcome, print_user_error
from cifar_lab.hints import unknown_options
from cifar_lab.lifecycle import run
from cifar_lab.rundir import refuse_links
from cifar_lab.summary import RunSummary

log = logging.getLogger("cifar_lab")

filter_warnings()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task: best val acc (a fraction) for sweepers; in a multirun a failed job returns None."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        # The scope imports Lightning, so a single-device run skips it (and reports config errors at once).
        with ddp_job_scope() if placement(cfg.trainer).several else contextlib.nullcontext():
            summary = run(cfg, run_dir)
    except BaseException as err:
        outcome = outcome_of(err)
        if not outcome.expected:  # a crash: summary.json says failed; the traceback is for a bug report
            if not multirun:
                raise
            log.exception(
                "job failed; the sweep goes on"
            )  # a raise here would end the sweep (Hydra's sweepers re-raise)
            return None
        if isinstance(err, SystemExit) and outcome.exit_code == 0:
            raise
        if outcome.exit_code == EXIT_OK:  # a resume with nothing left to train: the run is left as it was
            print(f"\n{outcome.message}\n", flush=True)
            recorded = RunSummary.reopen(run_dir)
            return ((recorded.data.get("best") or {}) if recorded else {}).get("val_acc")
        print_outcome(outcome)
        if multirun and outcome.status in ("failed", "diverged"):
            return None  # summary.json says so; the sweep goes on and its summary lists the job
        sys.exit(outcome.exit_code)
    best = summary.get("best") or {}
    return best.get("val_acc")


def main() -> None:
    message = unknown_options(sys.argv[1:])
    if message:
        print_user_error(message)
        sys.exit(EXIT_USER_ERROR)
    # Hydra writes .hydra/ into an existing hydra.run.dir before any of our code runs: check it first.
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    try:
        for folder in given:
            refuse_links(Path(folder))
    except UserError as err:
        print_user_error(err)
        sys.exit(EXIT_USER_ERROR)
    hydra_main()


if __name__ == "__main__":
    main()
