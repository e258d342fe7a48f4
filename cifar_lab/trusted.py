"""A file is data, never code: the configs a checkpoint or a run directory holds, rebuilt from ``conf/``.

A checkpoint keeps the model, optimizer and scheduler configs it was trained with (so it loads with no
config at hand), and a run's identity keeps its data options. Hydra's ``instantiate`` would call
whatever ``_target_`` such a node names, nested ones included (``torch.load`` of a ``BytesIO``,
``open``, ``Path.write_text``: each an ordinary callable). So nothing read from a file is instantiated
as it stands. Each node is matched to the option of ``conf/<group>/`` it was composed from; the node
that is built takes its ``_target_`` and ``_partial_`` from that file and only the plain option values
from the stored one, and those values pass the same schema as a command line. Anything else (another
target, a nested node, a key the option does not have, an interpolation) is refused, in one paragraph,
before anything is built. No torch import.
"""

from __future__ import annotations

import re
import reprlib
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR
from cifar_lab.errors import Interrupted, UserError

PLAIN = (str, int, float, bool, type(None))  # exact types: a subclass (a tensor is none) is not plain
MAX_LIST, MAX_TEXT = 64, 4096
MAX_CLASSES = 100_000
HPARAMS = ("net", "optimizer", "l2", "num_classes", "classes", "scheduler")  # ClassifierModule's stored arguments
NESTED = {"scheduler": ("schedule",)}  # the only nodes inside a group's node, each a target of its own
# The data options a run's identity may hand to evaluate/predict: values of conf/data/*.yaml, never a
# built node (data.reader, data.datamodule are rebuilt from conf/ by composing data=<source>).
DATA_NODES = ("data.reader", "data.datamodule")
# Where data is downloaded and cached: taken from this machine's defaults and command line, never from a
# record (a file must not choose where anything is written). An image folder's root is kept: it is only read.
WHERE = ("data_dir", "data.cache_dir", "data.download")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate of one of our own nodes; a UserError or a signal's stop raised by the target is
    passed on unwrapped (Hydra would wrap it, and the run would read as a crash)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (UserError, Interrupted)):  # ours: a user's mistake, or a signal's stop
            raise err.__cause__ from None
        raise


class UntrustedConfig(UserError):
    """A config read from a file names code or values that cifar_lab's own configs do not."""


@cache
def options(group: str) -> dict[str, dict[str, Any]]:
    """Each option of ``conf/<group>/`` as written (interpolations unresolved)."""
    folder = Path(CONF_DIR) / group
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=False) for p in sorted(folder.glob("*.yaml"))}


def shown(value: Any) -> str:
    """A value as a message shows it: short, whatever its size."""
    return reprlib.repr(value)


def plain_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a plain option value (a number, string, bool, null, or a short list of those)."""
    if isinstance(value, list) and len(value) > MAX_LIST:
        return f"{key} holds a list of {len(value)} items"
    for item in value if isinstance(value, list) else [value]:
        if type(item) not in PLAIN:
            return f"{key} holds {type(item).__name__} {shown(item)}, not a plain value"
        if isinstance(item, str) and ("${" in item or item == "???" or len(item) > MAX_TEXT):
            return f"{key} holds {shown(item)}, not a plain value (an interpolation, ??? or a long text)"
    return None


def same(value: Any, ours: Any) -> bool:
    """``value == ours`` for plain values of the same type (a tensor or a subclass never compares)."""
    return type(value) is type(ours) and value == ours


def node_problem(group: str, stored: Any, ours: dict[str, Any], prefix: str, option: str = "") -> str | None:
    """Why ``stored`` is not a node of the option ``ours`` (None: it is one)."""
    if not isinstance(stored, dict):
        return f"{prefix} is {type(stored).__name__}, not a config node"
    if "name" in ours and not same(stored.get("name"), ours["name"]):
        return f"{prefix}.name is {shown(stored.get('name'))}, not {ours['name']!r}"
    for key, value in stored.items():
        where = f"{prefix}.{key}"
        if type(key) is not str:
            return f"{prefix} has a key {shown(key)} that is not a name"
        if key not in ours:
            takes = ", ".join(k for k in ours if not k.startswith("_") and k != "name") or "no options"
            return f"{group}={option or '?'} does not take {where} (it takes {takes})"
        if key.startswith("_"):
            if not same(value, ours[key]):
                return f"{where} is {shown(value)}, where cifar_lab's config has {ours[key]!r}"
        elif key in NESTED.get(group, ()):
            problem = node_problem(group, value, ours[key], where, option)
            if problem:
                return problem
        elif problem := plain_problem(where, value):
            return problem
    missing = [k for k in ours if (k.startswith("_") or k in NESTED.get(group, ())) and k not in stored]
    if missing:
        return f"{prefix} lacks {', '.join(missing)}"
    return None


def rebuilt(group: str, stored: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Our option's ``_`` keys (the target), the stored node's values; a nested node the same way."""
    out = {k: v for k, v in ours.items() if k.startswith("_")}
    for key, value in stored.items():
        if key.startswith("_"):
            continue
        out[key] = rebuilt(group, value, ours[key]) if key in NESTED.get(group, ()) else value
    return out


def trusted_node(group: str, stored: Any) -> dict[str, Any]:
    """The node of ``conf/<group>/`` that ``stored`` describes, rebuilt from that file (UntrustedConfig if none)."""
    ours = options(group)
    named = stored.get("name") if isinstance(stored, dict) else None
    named = named if type(named) is str else None
    # Options that name themselves (models, schedulers) are matched by name, the others by trying each.
    candidates = {n: o for n, o in ours.items() if "name" not in o or same(named, o["name"])}
    target = stored.get("_target_") if isinstance(stored, dict) else None
    target = target if type(target) is str else None
    targets = sorted({str(o.get("_target_")) for o in ours.values() if "_target_" in o})
    if target is not None and any(o.get("_target_") == target for o in candidates.values()):
        candidates = {n: o for n, o in candidates.items() if o.get("_target_") == target}
    elif target is not None and "name" not in next(iter(ours.values())):
        raise UntrustedConfig(f"its {group} config names {target!r}, none of cifar_lab's {', '.join(targets)}")
    problems = []
    for name, option in candidates.items():
        problem = node_problem(group, stored, option, group, name)
        if problem is None:
            return rebuilt(group, stored, option)
        problems.append(problem if len(candidates) == 1 else f"as {group}={name}: {problem}")
    if not candidates:
        problems.append(f"{group}.name is {shown(stored.get('name'))}, none of {', '.join(sorted(ours))}")
    names = f" (it names {shown(target)})" if target is not None and target not in targets else ""
    raise UntrustedConfig(f"its {group} config is not one of cifar_lab's own{names}: {'; '.join(problems)}")


def trusted_hparams(hparams: Any) -> dict[str, Any]:
    """ClassifierModule's arguments (a checkpoint's ``hyper_parameters`` as read from the file, or a run's
    configs): only those, each of the shape it writes (net and optimizer configs, a scheduler config or None),
    each config rebuilt from ``conf/`` and every value checked by the schema. UntrustedConfig (one paragraph's
    worth) if anything is not ours."""
    from cifar_lab.schema import problems

    if not isinstance(hparams, dict):
        raise UntrustedConfig(f"its hyper_parameters are {type(hparams).__name__}, not a config")
    unknown = sorted(map(shown, set(hparams) - set(HPARAMS)))
    if unknown:  # e.g. Lightning's _instantiator/_class_path, which would hand the configs to another builder
        raise UntrustedConfig(f"its hyper_parameters hold {', '.join(unknown)}, which ClassifierModule does not take")
    out = dict(hparams)
    for key, group in (("net", "model"), ("optimizer", "optimizer"), ("scheduler", "scheduler")):
        value = hparams.get(key)
        if not isinstance(value, dict) and not (key == "scheduler" and value is None):
            raise UntrustedConfig(f"its {group} config is {type(value).__name__}, not a config node")
        out[key] = trusted_node(group, value) if value is not None else None
    found = [p for key in ("l2", "num_classes") if key in hparams and (p := plain_problem(key, hparams[key]))]
    num_classes = hparams.get("num_classes", 10)
    if type(num_classes) is not int or not 1 <= num_classes <= MAX_CLASSES:
        found.append(f"num_classes must be an integer from 1 to {MAX_CLASSES}, got {shown(num_classes)}")
    classes = hparams.get("classes")
    if classes is not None and not (
        type(classes) is list and len(classes) == num_classes and all(type(c) is str and len(c) <= 200 for c in classes)
    ):
        found.append(f"classes must be a list of {shown(num_classes)} names, got {shown(classes)}")
    if not found:
        checked = {"model": out["net"], "optimizer": out["optimizer"], "scheduler": out["scheduler"],
                   "l2": hparams.get("l2", 0.0)}  # fmt: skip
        found = problems(OmegaConf.create({k: v for k, v in checked.items() if type(v) in (dict, int, float)}))
    if found:
        raise UntrustedConfig("its configs do not pass cifar_lab's checks: " + "; ".join(map(str, found)))
    return out


def trusted_data_options(stored: dict[str, Any]) -> dict[str, Any]:
    """The plain ``data.*``/``data_dir``/``seed`` options of a run's identity (flat dotted keys), less where
    to write (``WHERE``). A run records no built node (data.reader, data.datamodule: resume.DERIVED), so one
    there is refused, as is any value that is not plain."""
    out = {}
    for key, value in stored.items():
        if not isinstance(key, str):
            raise UntrustedConfig(f"its run record has a key {key!r} that is not a name")
        if not (key.startswith("data.") or key in ("data", "data_dir", "seed")):
            continue
        if key == "data" or any(key == n or key.startswith(n + ".") for n in DATA_NODES):
            raise UntrustedConfig(f"its run record holds {key}, a node cifar_lab builds from its own conf/ only")
        if problem := plain_problem(key, value):
            raise UntrustedConfig(f"its run record's data options are not plain values: {problem}")
        if key in WHERE or (key == "data.root" and stored.get("data.source") != "image_folder"):
            continue  # where to write, download or cache: this machine's settings, never a file's
        out[key] = value
    return out


def trusted_record(record: Any) -> dict[str, Any]:
    """A checkpoint's run record (``resume.IDENTITY_KEY``): a flat config of plain values and the data's
    fingerprint (text), as a run writes it; {} for none. UntrustedConfig if it has another shape."""
    if record is None:
        return {}
    if not isinstance(record, dict) or set(record) - {"config", "data"}:
        raise UntrustedConfig("its run record is not the config and data fingerprint a run writes")
    config = record.get("config", {})
    if not isinstance(config, dict):
        raise UntrustedConfig(f"its run record's config is {type(config).__name__}, not a config")
    for key, value in config.items():
        if type(key) is not str:
            raise UntrustedConfig(f"its run record has a key {shown(key)} that is not a name")
        if problem := plain_problem(key, value):
            raise UntrustedConfig(f"its run record is not plain values: {problem}")
    if record.get("data") is not None and (type(record["data"]) is not str or len(record["data"]) > MAX_TEXT):
        raise UntrustedConfig("its run record's data fingerprint is not a text")
    return record


# Entries older Lightning versions read to rebuild a module (and hand an ``_instantiator``); a run never writes them.
LEGACY = ("hparams", "module_arguments", "hparams_type", "hyper_parameters_type")


def trusted_header(raw: Any) -> None:
    """What a checkpoint holds besides its configs, as a run writes it: a dict; weights named ``net.*``
    tensors; an epoch count; a Lightning 2.x version; none of Lightning's older rebuild entries."""
    import torch

    if not isinstance(raw, dict):
        raise UntrustedConfig(f"it holds a {type(raw).__name__}, not a checkpoint")
    state_dict = raw.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        type(k) is str and k.startswith("net.") and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise UntrustedConfig("its state_dict is not the network's named tensors (net.*)")
    if type(raw.get("epoch", 0)) is not int or raw.get("epoch", 0) < 0:
        raise UntrustedConfig(f"its epoch is {shown(raw.get('epoch'))}, not a count")
    version = raw.get("pytorch-lightning_version")
    if type(version) is not str or not re.fullmatch(r"2\.\d+\.\d+\S*", version):
        raise UntrustedConfig(f"its Lightning version is {shown(version)}, not a 2.x version this cifar_lab writes")
    legacy = [k for k in LEGACY if k in raw] + (["hparams_name"] if raw.get("hparams_name") is not None else [])
    if legacy:
        raise UntrustedConfig(f"it holds {', '.join(legacy)}, entries a run never writes")


def refusal(path: Any, err: UntrustedConfig) -> UntrustedConfig:
    """The one paragraph for a refused file: which file, why, and what to do."""
    return UntrustedConfig(
        f"{path} was not loaded: {err}. cifar_lab builds only its own models, optimizers, schedulers and data "
        "sources from a checkpoint or run directory (the options in its conf/ folder), so that a file someone "
        "sent cannot choose what code runs. Use a checkpoint written by cifar_lab, or build the model yourself "
        "and load only the weights (torch.load(path, weights_only=True)['state_dict'])."
    )
