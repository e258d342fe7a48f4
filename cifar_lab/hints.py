"""A mistyped option gets "did you mean ...?" instead of Hydra's "To append to your config use +key".

Checked before Hydra composes the run: the command line's plain ``key=value`` overrides are looked up in
the config that its group choices compose to; an unknown key is reported with the closest valid keys.
Light: no torch import. Anything this cannot decide (sweep values of a group, syntax errors) is left
to Hydra, which reports it itself.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR, compose, flatten


def option_keys(node: Any) -> list[str]:
    """The dotted keys a user sets: leaves, without Hydra's ``_target_``-style keys and built nodes."""
    return [k for k in flatten(node, private=False) if not k.startswith(("data.reader.", "data.datamodule."))]


def has_key(cfg: Any, key: str) -> bool:
    """Whether ``key`` exists (a required ``???`` value counts: it exists, it is just not set)."""
    node, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, node, default=None, throw_on_missing=False) if node else cfg
    return OmegaConf.is_dict(parent) and leaf in parent.keys()  # `in parent` is False for a ??? value


def unknown_options(args: list[str], config_name: str = "config") -> str | None:
    """The one-paragraph error for overrides of keys the config does not have; None when all exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # a syntax error: Hydra's own message says where
        return None
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    chosen, keys = [], []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_add() or o.is_delete() or o.is_force_add():
            continue
        if key in groups:
            if not o.is_sweep_override():
                chosen.append(o.input_line)
            continue
        keys.append(key)
    if not keys:
        return None
    try:
        cfg = compose(*chosen, config_name=config_name)
    except Exception:  # e.g. an unknown group option: Hydra lists the valid ones
        return None
    known = option_keys(OmegaConf.to_container(cfg, resolve=False))
    unknown = [k for k in keys if not has_key(cfg, k)]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        parts.append(f"{key} is not an option (Key '{key.rsplit('.', 1)[-1]}' is not in struct){hint}")
    return (
        " ".join(parts) + " Every option is listed in docs/configuration.md, and "
        "`python -m cifar_lab --cfg job [overrides]` prints the composed config. To add a new key on purpose, "
        "prefix it with +."
    )
