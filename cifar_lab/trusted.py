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

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR
from cifar_lab.errors import UserError

PLAIN = (str, int, float, bool, type(None))
HPARAMS = ("net", "optimizer", "l2", "num_classes", "classes", "scheduler")  # ClassifierModule's stored arguments
NESTED = {"scheduler": ("schedule",)}  # the only nodes inside a group's node, each a target of its own
# The data options a run's identity may hand to evaluate/predict: values of conf/data/*.yaml, never a
# built node (data.reader, data.datamodule are rebuilt from conf/ by composing data=<source>).
DATA_NODES = ("data.reader", "data.datamodule")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate of one of our own nodes, a UserError raised by the target passed on unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


class UntrustedConfig(UserError):
    """A config read from a file names code or values that cifar_lab's own configs do not."""


@cache
def options(group: str) -> dict[str, dict[str, Any]]:
    """Each option of ``conf/<group>/`` as written (interpolations unresolved)."""
    folder = Path(CONF_DIR) / group
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=False) for p in sorted(folder.glob("*.yaml"))}


def plain_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a plain option value (a number, string, bool, null, or a list of those)."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, PLAIN):
            return f"{key} holds {type(item).__name__} {item!r}, not a plain value"
        if isinstance(item, str) and "${" in item:
            return f"{key} holds an interpolation {item!r}"
    return None


def node_problem(group: str, stored: Any, ours: dict[str, Any], prefix: str) -> str | None:
    """Why ``stored`` is not a node of the option ``ours`` (None: it is one)."""
    if not isinstance(stored, dict):
        return f"{prefix} is {type(stored).__name__}, not a config node"
    if "name" in ours and stored.get("name") != ours["name"]:
        return f"{prefix}.name is {stored.get('name')!r}, not {ours['name']!r}"
    for key, value in stored.items():
        where = f"{prefix}.{key}"
        if not isinstance(key, str):
            return f"{prefix} has a key {key!r} that is not a name"
        if key not in ours:
            return f"{where} is not an option of cifar_lab's {group} config"
        if key.startswith("_"):
            if value != ours[key]:
                return f"{where} is {value!r}, where cifar_lab's config has {ours[key]!r}"
        elif key in NESTED.get(group, ()):
            problem = node_problem(group, value, ours[key], where)
            if problem:
                return problem
        elif problem := plain_problem(where, value):
            return problem
    missing = [k for k in ours if k.startswith("_") and k not in stored]
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
    # Options that name themselves (models, schedulers) are matched by name, the others by trying each.
    candidates = {n: o for n, o in ours.items() if "name" not in o or o["name"] == named}
    target = stored.get("_target_") if isinstance(stored, dict) else None
    targets = sorted({str(o.get("_target_")) for o in ours.values() if "_target_" in o})
    if isinstance(target, str) and any(o.get("_target_") == target for o in candidates.values()):
        candidates = {n: o for n, o in candidates.items() if o.get("_target_") == target}
    elif target is not None and "name" not in next(iter(ours.values())):
        raise UntrustedConfig(f"its {group} config names {target!r}, none of cifar_lab's {', '.join(targets)}")
    problems = []
    for name, option in candidates.items():
        problem = node_problem(group, stored, option, group)
        if problem is None:
            return rebuilt(group, stored, option)
        problems.append(problem if len(candidates) == 1 else f"as {group}={name}: {problem}")
    if not candidates:
        problems.append(f"{group}.name is {named!r}, none of {', '.join(sorted(ours))}")
    names = f" (it names {target!r})" if isinstance(target, str) and target not in targets else ""
    raise UntrustedConfig(f"its {group} config is not one of cifar_lab's own{names}: {'; '.join(problems)}")


def trusted_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` for ``ClassifierModule``, every config rebuilt from ``conf/``
    and checked by the schema; UntrustedConfig (one paragraph's worth) if any part is not ours."""
    from cifar_lab.schema import problems

    unknown = sorted(map(str, set(hparams) - set(HPARAMS)))
    if unknown:  # e.g. Lightning's _instantiator/_class_path, which would hand the configs to another builder
        raise UntrustedConfig(f"its hyper_parameters hold {unknown}, which ClassifierModule does not take")
    out = dict(hparams)
    # A built object (an nn.Module, a partial) is code its caller chose; None means none; a dict is data.
    for key, group in (("net", "model"), ("optimizer", "optimizer"), ("scheduler", "scheduler")):
        if isinstance(hparams.get(key), dict) or (key != "scheduler" and hparams.get(key) is None):
            out[key] = trusted_node(group, hparams.get(key))
        elif isinstance(hparams.get(key), (str, int, float, list)):
            raise UntrustedConfig(f"its {group} config is {type(hparams[key]).__name__}, not a config node")
    found = []
    for key in ("l2", "num_classes"):
        if key in hparams and (problem := plain_problem(key, hparams[key])):
            found.append(problem)
    num_classes = hparams.get("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        found.append(f"num_classes must be a positive integer, got {num_classes!r}")
    classes = hparams.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes)
    ):
        found.append(f"classes must be a list of {num_classes} names, got {classes!r}"[:200])
    if not found:
        checked = {"model": out["net"], "optimizer": out["optimizer"], "l2": hparams.get("l2", 0.0)}
        found = problems(OmegaConf.create({k: v for k, v in checked.items() if isinstance(v, (dict, int, float))}))
    if found:
        raise UntrustedConfig("its configs do not pass cifar_lab's checks: " + "; ".join(found))
    return out


def trusted_data_options(stored: dict[str, Any]) -> dict[str, Any]:
    """The plain ``data.*``/``data_dir``/``seed`` options of a run's identity (flat dotted keys). A run
    records no built node (data.reader, data.datamodule: resume.DERIVED), so one there is refused, as is
    any value that is not plain."""
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
        out[key] = value
    return out


def refusal(path: Any, err: UntrustedConfig) -> UntrustedConfig:
    """The one paragraph for a refused file: which file, why, and what to do."""
    return UntrustedConfig(
        f"{path} was not loaded: {err}. cifar_lab builds only its own models, optimizers, schedulers and data "
        "sources from a checkpoint or run directory (the options in its conf/ folder), so that a file someone "
        "sent cannot choose what code runs. Use a checkpoint written by cifar_lab, or build the model yourself "
        "and load only the weights (torch.load(path, weights_only=True)['state_dict'])."
    )
