"""``python -m cifar_lab``: the Hydra entry point and the exit policy; the run itself is :mod:`cifar_lab.lifecycle`.

A command line is checked before Hydra creates any directory (``refusal``): mistyped group values and option
names (hints), then, for a run, the composed config (the schema's checks, which ``lifecycle.admit`` runs again
in the job) and a resume with nothing to continue (``resume.resume_path``); for a sweep (``-m``), the config
of each combination of its group values, and each swept value against its option's rule. A refusal is one
paragraph and exit 2, with nothing written.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.configs import CONF_DIR, compose
from cifar_lab.console import filter_warnings
from cifar_lab.distributed import ddp_job_scope, placement
from cifar_lab.errors import EXIT_OK, EXIT_USER_ERROR, UserError, outcome_of, print_outcome, print_user_error
from cifar_lab.hints import is_group, unknown_choices, unknown_options
from cifar_lab.lifecycle import run
from cifar_lab.resume import resume_path
from cifar_lab.rundir import refuse_links
from cifar_lab.schema import RULES, rules_for, validate
from cifar_lab.summary import RunSummary
from cifar_lab.sweep import failed_job

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
            log.exception("job failed; the sweep goes on")
            return failed_job(outcome.message)  # None: a raise would end a basic sweep (it re-raises)
        if isinstance(err, SystemExit) and outcome.exit_code == 0:
            raise
        if outcome.exit_code == EXIT_OK:  # a resume with nothing left to train: the run is left as it was
            print(f"\n{outcome.message}\n", flush=True)
            recorded = RunSummary.reopen(run_dir)
            return ((recorded.data.get("best") or {}) if recorded else {}).get("val_acc")
        print_outcome(outcome)
        if multirun and outcome.status in ("failed", "diverged"):
            return failed_job(f"{outcome.status}: {outcome.message}")  # the sweep goes on; its summary lists it
        sys.exit(outcome.exit_code)
    best = summary.get("best") or {}
    return best.get("val_acc")


# Hydra's own flags (hydra/_internal/utils.py get_args_parser): those that print instead of running, those that
# take a value, and those that load another config (then the checks below leave everything to Hydra).
PRINTING_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-p", "--package", "--resolve",
                  "-sc", "--shell-completion", "--version")  # fmt: skip
VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
               "--config-dir", "--experimental-rerun", "-sc", "--shell-completion")  # fmt: skip
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
OTHER_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")
MAX_SWEEP_CHECKS = 64  # group-value combinations of a sweep composed and checked before it starts
# Hydra runs one of these modes per command (it raises a traceback for two of them).
MODES = {"-r": "--run", "--run": "--run", "-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg",
         "--cfg": "--cfg", "-i": "--info", "--info": "--info", "-sc": "--shell-completion",
         "--shell-completion": "--shell-completion"}  # fmt: skip


def split_command_line(args: list[str]) -> tuple[list[str], set[str]]:
    """The overrides and Hydra's flags (``-m``, ``--cfg``, ...) of a command line, a flag's value skipped."""
    overrides, flags = [], set()
    words = iter(args)
    for word in words:
        flag = word.split("=", 1)[0] if word.startswith("--") else word
        if not word.startswith("-"):
            overrides.append(word)
            continue
        flags.add(flag)
        if flag in VALUE_FLAGS and "=" not in word:
            next(words, None)
        elif flag in ("-i", "--info") and "=" not in word:
            rest = list(words)
            words = iter(rest[1:] if rest and rest[0] in INFO_TOPICS else rest)
    return overrides, flags


def task_config(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """The job's config as Hydra will compose it, and Hydra's own node (run and sweep directories)."""
    cfg = compose(*overrides, hydra_node=True)
    hydra_node = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_node


def run_refusal(overrides: list[str]) -> str | None:
    """Why a single run would be refused before training (a bad value, a missing one, an option its model lacks,
    a resume with nothing to continue); None if it may start or when Hydra should report the problem."""
    try:
        cfg, hydra_node = task_config(overrides)
    except Exception:  # Hydra's composition error, reported by Hydra itself
        return None
    try:
        validate(cfg)
        if cfg.get("resume"):
            run_dir = Path(OmegaConf.select(hydra_node, "run.dir"))
            if not (run_dir / "checkpoints" / "last.ckpt").is_file():  # with one, admit reads and compares it
                resume_path(cfg, run_dir, [o for o in overrides if not o.startswith("hydra")])
    except UserError as err:
        return str(err)
    except Exception:  # e.g. an interpolation that does not resolve: the job reports it as it always did
        return None
    return None


def sweep_values(override: Any) -> list[Any] | None:
    """The values a sweep override takes (``a,b``, ``choice()``, ``range()``, a group's ``glob()``); None for a
    search space (``interval()``) or a plain value."""
    if not override.is_sweep_override():
        return None
    try:
        return list(override.sweep_iterator())
    except Exception:  # an interval: an Optuna search's proposals are each trial's to check
        return None


def launcher_refusal(overrides: list[str]) -> str | None:
    """The packed launcher's options (``hydra.launcher.pack``, ``max_pack``), checked by their rules before Hydra
    builds the launcher (which would refuse them inside its "Error in call to target", after the sweep's folder)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra's own message says where
        return None
    packed = any(o.key_or_group == "hydra/launcher" and str(o.value()) == "packed" for o in parsed)
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra.launcher.") and key in RULES:
            if not packed:
                return f"{key} is an option of the packed launcher: add hydra/launcher=packed (docs/packed.md)."
            values = sweep_values(o) or [o.value()]
            if problems := [m for v in values if (m := RULES[key].check(key, v))]:
                return f"invalid configuration: {'; '.join(problems)}."
    return None


def sweep_refusal(overrides: list[str]) -> str | None:
    """Why a sweep's jobs would be refused: each combination of its group values (up to MAX_SWEEP_CHECKS) is
    composed with the fixed overrides and checked, and each swept value against its option's rule. Left to
    the jobs: combinations of swept plain values, and anything an Optuna search proposes."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # a group's glob() needs the loader
            parsed = OverridesParser.create(GlobalHydra.instance().config_loader()).parse_overrides(overrides)
            swept = [(o, sweep_values(o)) for o in parsed]
    except Exception:  # a syntax error: Hydra's own message says where
        return None
    fixed = [o.input_line for o, values in swept if values is None and not o.is_sweep_override()]
    groups = [[f"{o.key_or_group}={v}" for v in values] for o, values in swept if values and is_group(o.key_or_group)]
    plain = [(o.key_or_group, values) for o, values in swept if values and not is_group(o.key_or_group)]
    for combination in itertools.islice(itertools.product(*groups), MAX_SWEEP_CHECKS):
        try:
            cfg, _ = task_config([*fixed, *combination])
        except Exception:  # Hydra's composition error, reported by Hydra itself
            return None
        job = f"the sweep's jobs with {' '.join(combination)}" if combination else "the sweep's jobs"
        try:
            validate(cfg)
            rules = rules_for(cfg)
            bad = [m for key, values in plain if key in rules for v in values if (m := rules[key].check(key, v))]
        except UserError as err:
            return f"{job} would be refused: {err}"
        except Exception:  # e.g. an interpolation that does not resolve: each job reports it as it always did
            return None
        if bad:
            return f"{job} would be refused: invalid configuration: {'; '.join(bad)}. Fix the swept values."
    return None


def refusal(args: list[str]) -> str | None:
    """The one paragraph that refuses this command line before Hydra runs it; None if Hydra may run it."""
    overrides, flags = split_command_line(args)
    modes = sorted({MODES[f] for f in flags if f in MODES})
    if len(modes) > 1:
        return (
            f"{' and '.join(modes)} cannot be given together: Hydra runs one of them per command. To see a sweep's "
            "config, drop -m (`python -m cifar_lab --cfg job <one value per key>`); to run it, drop --cfg/--info."
        )
    if flags & set(OTHER_CONFIG_FLAGS):
        return None
    message = unknown_choices(overrides) or launcher_refusal(overrides) or unknown_options(overrides)
    if message or flags & set(PRINTING_FLAGS):
        return message
    if flags & {"-m", "--multirun"}:
        return sweep_refusal(overrides)
    return run_refusal(overrides)


def main() -> None:
    message = refusal(sys.argv[1:])
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
