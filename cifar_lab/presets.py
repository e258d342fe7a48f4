"""Which seed preset (conf/experiment/) a composed run is, or the one it is closest to and how it differs.

``python -m cifar_lab model=resnet reg=dropout`` is not ``experiment=p2b_dropout`` (lr 0.01 against 0.003):
the run says so in its first console line and in summary.json (``composed``). Each preset is composed once
per process and data source, on the run's own data source (so ``data=synthetic``'s batch size is no
difference); only the options that change what is trained are compared. Light: no torch import.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import CONF_DIR, REGULARISERS, compose, flatten, in_force

log = logging.getLogger("cifar_lab")

# The options that change what is trained; data sources, paths, seeds, loggers and speed settings do not.
TRAINING_NODES = ("model", "optimizer", "scheduler")
TRAINING_KEYS = ("l2", "data.batch_size", "data.augment", "trainer.max_epochs", "trainer.precision")


def presets() -> list[str]:
    """The seed presets, conf/experiment/*.yaml."""
    return sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))


@cache
def preset_models() -> dict[str, str]:
    """Each preset's model: its file's ``override /model: <name>``, else conf/config.yaml's default model."""

    def model_in(path: Path, key: str) -> str | None:
        entries = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])
        return next((str(e[key]) for e in entries if isinstance(e, dict) and key in e), None)

    default = model_in(Path(CONF_DIR, "config.yaml"), "model")
    return {name: model_in(Path(CONF_DIR, "experiment", f"{name}.yaml"), "override /model") or default
            for name in presets()}  # fmt: skip


@cache
def set_by(key: str) -> list[str]:
    """The ``reg=<option>`` choices whose file sets ``key`` (``model.dropout``: ``reg=dropout``)."""
    found = []
    for path in sorted(Path(CONF_DIR, "reg").glob("*.yaml")):
        if key in flatten(OmegaConf.to_container(OmegaConf.load(path))):
            found.append(f"reg={path.stem}")
    return found


def training_settings(cfg: DictConfig) -> dict[str, Any]:
    """The training options of a composed config, as dotted keys with resolved values; the optimizer's class as
    ``optimizer`` (e.g. ``SGD``), other ``_``-keys left out."""
    out: dict[str, Any] = {}
    for node in TRAINING_NODES:
        value = OmegaConf.select(cfg, node, default=None)
        if OmegaConf.is_dict(value):
            out.update(flatten(OmegaConf.to_container(value, resolve=True), f"{node}.", private=False))
    target = OmegaConf.select(cfg, "optimizer._target_", default=None)
    if target is not None:
        out["optimizer"] = str(target).rsplit(".", 1)[-1]
    for key in TRAINING_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


@cache
def preset_settings(source: str | None, model: str | None) -> dict[str, dict[str, Any]]:
    """The training options of each preset of ``model``, composed on data ``source`` (a conf/data option; else
    the default): a run composes only the presets it can match, once per process."""
    data = [f"data={source}"] if source and Path(CONF_DIR, "data", f"{source}.yaml").is_file() else []
    mine = [name for name, used in preset_models().items() if used == model]
    return {name: training_settings(compose(f"experiment={name}", *data)) for name in mine}


def shown(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return str(value)


def differences(mine: dict[str, Any], theirs: dict[str, Any], preset: str) -> list[str]:
    """``key=value (preset: value)`` for each training option that differs (``unset`` where one side lacks it)."""
    out = []
    for key in sorted(set(mine) | set(theirs), key=lambda k: (k != "optimizer", k)):
        a, b = mine.get(key, "unset"), theirs.get(key, "unset")
        if a != b or isinstance(a, bool) != isinstance(b, bool):  # 0 equals 0.0, but false is no 0
            out.append(f"{key}={shown(a)} ({preset}: {shown(b)})")
    return out


def regularisers(settings: dict[str, Any]) -> frozenset[str]:
    """The regularisers in force in a run's training options, as ``configs.composed_name`` counts them."""
    return frozenset(reg for reg, key in REGULARISERS if in_force(settings.get(key)))


def describe(cfg: DictConfig) -> dict[str, Any]:
    """summary.json's ``composed``: the run's ``name``; the ``preset`` its training options equal (the one it
    names first), else null with the ``closest`` preset of the same model (the same regularisers in force first,
    then fewest differing options; the one it names wins a tie) and what ``differs`` from it. A config that
    cannot be compared (one that the checks refuse next) gets only its name: a label never stops a run."""
    name = str(cfg.name)
    try:
        return compare(cfg, name)
    except Exception as err:  # e.g. an interpolation that does not resolve: the schema's to report
        log.debug("no preset comparison for %s: %s", name, err)
        return {"name": name, "preset": None, "closest": None, "differs": []}


def compare(cfg: DictConfig, name: str) -> dict[str, Any]:
    mine = training_settings(cfg)
    source = OmegaConf.select(cfg, "data.source", default=None)
    candidates = preset_settings(source, mine.get("model.name"))
    regs = regularisers(mine)

    def distance(p: str) -> tuple:
        return regularisers(candidates[p]) != regs, len(differences(mine, candidates[p], p)), p != name, p

    ranked = sorted(candidates, key=distance)
    if not ranked:
        return {"name": name, "preset": None, "closest": None, "differs": []}
    best = ranked[0]
    differs = differences(mine, candidates[best], best)
    if not differs:
        return {"name": name, "preset": best, "closest": None, "differs": []}
    return {"name": name, "preset": None, "closest": best, "differs": differs}


def console_line(composed: dict[str, Any]) -> str | None:
    """The run's first line when it is not exactly the preset it is named after; None when it is."""
    name, preset = composed["name"], composed["preset"]
    if preset is not None:
        return None if preset == name else f"{name} has the settings of the {preset} preset (experiment={preset})"
    if composed["closest"] is None:
        return f"{name} matches no preset (no preset uses its model)"
    if composed["closest"] == name:
        return f"{name} is not the {name} preset: it differs in {', '.join(composed['differs'])}"
    return (
        f"{name} matches no preset; closest: {composed['closest']} (experiment={composed['closest']}), which differs "
        f"in {', '.join(composed['differs'])}"
    )
