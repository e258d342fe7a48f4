"""Using a trained model: find its checkpoint, load it with no config at hand, rebuild its data config.

Shared by ``python -m cifar_lab.evaluate`` and ``python -m cifar_lab.predict``. A checkpoint is
self-contained: ``ClassifierModule.load_from_checkpoint`` rebuilds the network from the model and
optimizer configs stored in it, and the run's identity (``resume.IDENTITY_KEY``) records the data it
was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import compose
from cifar_lab.errors import UserError
from cifar_lab.hints import has_key
from cifar_lab.resume import IDENTITY_KEY
from cifar_lab.schema import problems as schema_problems
from cifar_lab.task import ClassifierModule
from cifar_lab.trusted import (
    UntrustedConfig,
    options,
    refusal,
    trusted_data_options,
    trusted_record,
)


def find_checkpoint(path: Path) -> Path:
    """A .ckpt file as given, or a run directory's best checkpoint (its last one if there is no best)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise UserError(
        f"{path} is neither a checkpoint file nor a run directory with checkpoints/best.ckpt or last.ckpt. "
        "Give a run directory (outputs/<name>/<source>-<time>) or a .ckpt file."
    )


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), else the checkpoint's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load(ckpt: Path, device: torch.device) -> tuple[ClassifierModule, dict[str, Any], int]:
    """The model in eval mode on ``device``, the checkpoint's stored run identity (possibly empty), its epoch."""
    from cifar_lab.resilience import AtomicCheckpointIO

    raw = AtomicCheckpointIO().load_checkpoint(ckpt, map_location="cpu")  # weights_only; a clear error if damaged
    hparams = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    if not isinstance(hparams, dict) or "net" not in hparams:
        raise UserError(
            f"{ckpt} does not hold its model's configuration (it was written by an older cifar_lab). Evaluate a "
            "checkpoint written by this version, or train the run again."
        )
    try:  # every part of the file is checked before anything is built (cifar_lab.trusted)
        identity = trusted_record(raw.get(IDENTITY_KEY))
        trusted_data_options(identity.get("config", {}))
        trusted_source(identity.get("config", {}))
        module = ClassifierModule.from_checkpoint(raw)  # checks the weights and configs, then builds (read once)
    except UntrustedConfig as err:
        raise refusal(ckpt, err) from None
    except RuntimeError as err:  # load_state_dict's: missing or unexpected keys, a size mismatch
        if STATE_DICT_ERROR not in str(err):
            raise
        raise weights_do_not_fit(ckpt, hparams, err) from None
    return module.to(device).eval(), dict(identity), int(raw.get("epoch", -1)) + 1


def trusted_source(stored: dict[str, Any]) -> str:
    """The data source a run record names: one of conf/data/'s options, never a path or an override."""
    source = stored.get("data.source", "cifar10")
    if type(source) is not str or source not in options("data"):
        raise UntrustedConfig(f"its run record names a data source {source!r}, not one of {sorted(options('data'))}")
    return source


STATE_DICT_ERROR = "Error(s) in loading state_dict"  # how torch's load_state_dict begins its RuntimeError


def weights_do_not_fit(ckpt: Path, hparams: dict[str, Any], err: RuntimeError) -> UserError:
    """One paragraph for a checkpoint whose stored model config builds a network its weights do not fit."""
    lines = [" ".join(line.split()).rstrip(".") for line in str(err).splitlines()[1:] if line.strip()]
    details = "; ".join(line if len(line) <= 200 else line[:200] + " ..." for line in lines[:3])
    net = hparams.get("net")
    model = {k: v for k, v in net.items() if k != "_target_"} if isinstance(net, dict) else {"net": net}
    model["num_classes"] = hparams.get("num_classes")
    return UserError(
        f"{ckpt} does not fit together: its stored model configuration {model} builds a network that its weights "
        f"do not fit ({details}{'; ...' if len(lines) > 3 else ''}). The checkpoint was edited, or its parts come "
        "from different runs or versions. Use the checkpoint file the run wrote, or train the run again."
    )


def data_config(identity: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The config for the data the run was trained on (from its checkpoint), with ``overrides`` applied.

    ``data=<source>`` in ``overrides`` switches to another source; then only the overrides describe it.
    """
    stored = identity.get("config", {})
    switched = any(o.split("=", 1)[0] == "data" for o in overrides)
    source = None if switched else trusted_source(stored)
    values = {} if switched else trusted_data_options(stored)  # plain values only; built nodes come from conf/
    cfg = compose(*([] if switched else [f"data={source}"]), *overrides)
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    for key, value in values.items():
        if key not in given and has_key(cfg, key):
            OmegaConf.update(cfg, key, value)
    problems = schema_problems(cfg)
    if problems:
        raise UntrustedConfig(
            "the data options of the run's record (in its checkpoint) and the command line do not pass cifar_lab's "
            "checks: " + "; ".join(problems) + ". Give the data options on the command line (data.<option>=...)."
        )
    return cfg


def device_for(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU, and this machine has none; use --device cpu.")
    return torch.device(name)
