"""Resume: which checkpoint a run continues from, checked before any file of the run is rewritten.

Every checkpoint carries the run's identity (``resilience.RunIdentity``): its whole resolved config,
less the few options that may change on resume, and the fingerprint of its input data. A resume
compares both with the run being started, so a changed option from the command line, a config file
or the environment (``$CIFAR_LAB_DATA``), or changed data, is refused with the differences named.
Checkpoints without an identity (older versions) fall back to comparing the command-line overrides.
A resume never destroys or rewrites a recorded run it cannot continue: without ``last.ckpt`` it is
refused (``resume=auto`` starts afresh only where no epoch was recorded), a run that has trained its
``trainer.max_epochs`` is left as it is, and fewer epochs than the run recorded are refused.
torch is imported only to read the checkpoint.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import flatten
from cifar_lab.errors import AlreadyComplete, UserError
from cifar_lab.rundir import recorded, recorded_run

log = logging.getLogger("cifar_lab")

RESUME_MODES = (False, True, "auto")
IDENTITY_KEY = "cifar_lab"  # the checkpoint entry written by resilience.RunIdentity
DERIVED = ("data.datamodule.", "data.reader.")  # copies of user options, built by Hydra
# Overrides that may differ between a run and its resumption: they do not change what is computed.
RESUME_MAY_CHANGE = (
    "resume",
    "name",  # a label (folder, report rows): a run named before composed names resumes under its new one
    "trainer.max_epochs",
    "trainer.max_time",  # a budget for this process's fit; Lightning's Timer keeps the elapsed time in last.ckpt
    "trainer.enable_progress_bar",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "speed.cpu_heap",  # where the allocator keeps pages; no number changes (tests/test_flops.py)
)
# Whole nodes that may change: the user's callbacks (conf/callbacks/) may end a fit early, never change a step.
RESUME_MAY_CHANGE_NODES = ("callbacks",)


def may_change_on_resume(key: str) -> bool:
    return key in RESUME_MAY_CHANGE or key.split(".", 1)[0] in RESUME_MAY_CHANGE_NODES


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a run computes: its resolved config as dotted keys, less what may change on resume."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if not may_change_on_resume(k) and not k.startswith(DERIVED)}


# Options added after checkpoints first stored their config: absent from an older checkpoint's config, they
# meant this value (the behaviour before the option existed), so a resume at that value is the same run.
ADDED_OPTIONS: dict[str, Any] = {
    "model.fc_act": "relu",
    "model.bn_stem": "conv_bn_relu",
    "model.bn_position": "after_act",
    "model.bn_momentum": 0.1,
    "model.bn_eval": "running",
    "model.block_conv_bias": True,
    "model.block_init": "default",
    "model.bn_weight_init": 1.0,
    "model.dropout_kind": "element",
    "model.stem_dropout": False,
    "scheduler.name": "none",
    "speed.pack_conv": "member",
    "speed.pack_isolation": "step",
    "speed.cpu_threads": None,  # torch's default; speed.channels_last was false then: a resume on the CPU passes
    # speed.channels_last=false to continue the same computation (the refusal names it)
}
# Groups added the same way: an absent key meant the value in this file (conf/...), Lightning's default or
# the TensorBoard logger every run had before `logger` became a group.
ADDED_FILES = {"trainer.": "trainer_defaults.yaml", "logger.": "logger/tensorboard.yaml"}


def value_before_added(key: str) -> Any:
    """What an option absent from an older checkpoint's config meant; ``NOT_ADDED`` if it is not a later one."""
    if key in ADDED_OPTIONS:
        return ADDED_OPTIONS[key]
    for prefix, name in ADDED_FILES.items():
        if key.startswith(prefix):
            return added_file_defaults(name).get(key.removeprefix(prefix), NOT_ADDED)
    return NOT_ADDED


@cache
def added_file_defaults(name: str) -> dict[str, Any]:
    """The values in ``conf/<name>`` (read once per process)."""
    from cifar_lab.configs import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / name), resolve=True)


NOT_ADDED = object()


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    missing = object()
    before = {**{k: v for k in now if k not in before and (v := value_before_added(k)) is not NOT_ADDED}, **before}
    keys = sorted(set(before) | set(now))
    shown = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
    return [
        f"{k}: {shown(before.get(k, missing))} -> {shown(now.get(k, missing))}"
        for k in keys
        if before.get(k, missing) != now.get(k, missing)
    ]


def result_overrides(overrides: list[str]) -> set[str]:
    """The overrides that change what a run computes (all but RESUME_MAY_CHANGE)."""
    return {o for o in overrides if not may_change_on_resume(o.split("=", 1)[0].lstrip("+~"))}


def previous_overrides(run_dir: Path) -> list[str] | None:
    """The overrides recorded in the run directory's summary.json, or None when it has none."""
    try:
        return list(json.loads((run_dir / "summary.json").read_text())["overrides"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_path(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> str | None:
    """The checkpoint ``trainer.fit`` continues from, or None to start afresh; UserError if it cannot
    (AlreadyComplete if there is nothing left to train). Nothing in ``run_dir`` is written here."""
    mode = cfg.get("resume", False)  # its values are checked by the schema
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not mode:
        return None
    if not ckpt.is_file():
        held = recorded_run(run_dir)
        if held is not None:
            raise UserError(
                f"{run_dir} holds {held}, but no {ckpt} to continue it from, so resume={str(mode).lower()} "
                "cannot continue it (and never starts again over a recorded run). The run is left as it was: put "
                "its last.ckpt back (from a backup, or from where the directory was copied), or start a new run "
                "elsewhere (leave hydra.run.dir out for a fresh directory)."
            )
        if mode == "auto":
            log.info("resume=auto: no %s and no recorded epoch yet, starting from scratch", ckpt)
            return None
        raise UserError(
            f"resume=true but there is no checkpoint {ckpt}, and no run in {run_dir} to continue. Pass the "
            "directory of the run to continue with hydra.run.dir=<that run's directory> (the one holding "
            "checkpoints/last.ckpt), or start a new run without resume (resume=auto continues a run where there "
            "is one and starts one where there is none)."
        )
    checkpoint = read_checkpoint(ckpt)
    if checkpoint is None:  # unreadable: the fit reports it (and records the run as failed)
        return str(ckpt)
    check_trusted(ckpt, checkpoint)
    identity = checkpoint.get(IDENTITY_KEY)
    if identity is not None:
        check_identity(cfg, run_dir, identity)
    else:
        check_overrides(run_dir, overrides)
    check_model(cfg, run_dir, checkpoint.get("state_dict", {}))
    check_epochs(cfg, run_dir, checkpoint)
    return str(ckpt)


def check_epochs(cfg: DictConfig, run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """``trainer.max_epochs`` leaves something to train, and no recorded epoch to undo.

    A ``last.ckpt`` is saved at the end of an epoch, so its ``epoch`` (0-based) is the number of epochs it
    holds less one. metrics.csv may hold one epoch more (its row is written just before the checkpoint).
    """
    max_epochs = cfg.trainer.get("max_epochs")
    if not isinstance(max_epochs, int):
        return
    epoch = checkpoint.get("epoch")
    trained = epoch + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    epochs, summary = recorded(run_dir)
    done = max(trained, epochs)
    if max_epochs < done:
        raise UserError(
            f"{run_dir} has {done} recorded epochs, more than trainer.max_epochs={max_epochs}: a resume cannot "
            f"train a run to fewer epochs than it has. The run is left as it was; resume it with "
            f"trainer.max_epochs={done} or more, or start a new run elsewhere (leave hydra.run.dir out)."
        )
    if trained >= max_epochs and summary.get("status") == "completed":
        raise AlreadyComplete(
            f"{run_dir} has already completed its {trained} epochs (trainer.max_epochs={max_epochs}): there is "
            "nothing to resume, and nothing was changed. To train it longer, resume it with a larger "
            "trainer.max_epochs."
        )


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def check_trusted(ckpt: Path, checkpoint: Any) -> None:
    """A checkpoint is refused unless it has the shape a run writes: its configs those of conf/ (cifar_lab.trusted),
    its run record plain values, its weights named tensors, its epoch a count. A resume builds nothing from
    the configs, but a file that is not a checkpoint of this run's is not continued."""
    from cifar_lab.trusted import UntrustedConfig, refusal, trusted_header, trusted_hparams, trusted_record

    try:
        trusted_header(checkpoint)
        if "hyper_parameters" in checkpoint:
            trusted_hparams(checkpoint["hyper_parameters"])
        trusted_record(checkpoint.get(IDENTITY_KEY))
    except UntrustedConfig as err:
        raise refusal(ckpt, err) from None


def may_change() -> str:
    return ", ".join([*RESUME_MAY_CHANGE[1:], *(f"{n}.*" for n in RESUME_MAY_CHANGE_NODES)])


def check_identity(cfg: DictConfig, run_dir: Path, identity: dict[str, Any]) -> None:
    # An older checkpoint may hold an option that has since become one that may change.
    stored = {k: v for k, v in identity.get("config", {}).items() if not may_change_on_resume(k)}
    diff = differences(stored, run_identity(cfg))
    if diff:
        raise UserError(
            f"{run_dir} was trained with different settings, so resuming it with these would mix two runs: "
            f"{'; '.join(diff)}. Resume with the original settings (only {may_change()} may change), or start "
            "a new run without resume."
        )
    stored = identity.get("data")
    now = data_fingerprint(cfg)
    if stored and now and stored != now:
        raise UserError(
            f"the data of {run_dir} changed since its last checkpoint (files added, removed or modified under "
            f"data.root, or other synthetic options): fingerprint {stored} then, {now} now. Resume on the data it "
            "was trained on, or start a new run without resume."
        )


def data_fingerprint(cfg: DictConfig) -> str | None:
    """The input data's fingerprint now; None where it cannot be read yet (a download still to come)."""
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.data.reader).fingerprint()
    except (OSError, UserError):
        return None


def check_model(cfg: DictConfig, run_dir: Path, state_dict: dict[str, Any]) -> None:
    """The checkpoint's weights fit the model these settings build (names and shapes)."""
    from hydra.utils import instantiate

    try:
        classes = len(instantiate(cfg.data.reader).classes())
    except (OSError, UserError):
        return
    net = instantiate(cfg.model, num_classes=classes)
    want = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith("net.")}
    if want != have:
        wrong = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:6]
        raise UserError(
            f"the checkpoint in {run_dir} holds another model than model={cfg.model.name} with these options "
            f"(weights that differ in name or shape: {', '.join(wrong)}). Resume with the run's original model "
            "settings, or start a new run without resume."
        )


def check_overrides(run_dir: Path, overrides: list[str]) -> None:
    """For checkpoints without an identity: compare the command-line overrides recorded in summary.json."""
    previous = previous_overrides(run_dir)
    if previous is not None:
        before, now = result_overrides(previous), result_overrides(overrides)
        if before != now:
            raise UserError(
                f"{run_dir} was started with a different command: only there {sorted(before - now) or 'nothing'}; "
                f"only here {sorted(now - before) or 'nothing'}. Resume with the original run's overrides plus "
                f"resume=true (only {may_change()} may change)."
            )
