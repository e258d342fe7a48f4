"""A mistyped option or group value gets "did you mean ...?" instead of Hydra's "To append to your config use
+key" or "Could not find 'experiment/p1x'" with its search path.

Checked before Hydra composes the run: every group value on the command line (a sweep's values included) is
looked up in the group's options (``unknown_choices``); the plain ``key=value`` overrides are looked up in the
config that its group choices compose to (``unknown_options``); each unknown one is reported with the closest
valid ones. Light: no torch import. Anything this cannot decide (syntax errors) is left to Hydra, which
reports it itself.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR, compose, flatten, group_options
from cifar_lab.schema import MODEL_RULES, lacking_option, models_with


def option_keys(node: Any) -> list[str]:
    """The dotted keys a user sets: leaves, without Hydra's ``_target_``-style keys and built nodes."""
    return [k for k in flatten(node, private=False) if not k.startswith(("data.reader.", "data.datamodule."))]


def has_key(cfg: Any, key: str) -> bool:
    """Whether ``key`` exists (a required ``???`` value counts: it exists, it is just not set)."""
    node, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, node, default=None, throw_on_missing=False) if node else cfg
    return OmegaConf.is_dict(parent) and leaf in parent.keys()  # `in parent` is False for a ??? value


def is_group(key: str) -> bool:
    """Whether ``key`` (an override's left side) names a config group: conf/<group>/ or Hydra's ``hydra/<group>``."""
    return key.startswith("hydra/") or (key != "hydra" and "/" not in key and Path(CONF_DIR, key).is_dir())


def chosen_values(override: Any) -> list[str]:
    """The group options an override chooses: one, a list (``reg=[l2,dropout]``) or a sweep's (``a,b``,
    ``choice(a,b)``); a glob chooses only options that exist, ``null`` none."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    items = value.list if isinstance(value, ChoiceSweep) else value if isinstance(value, list) else [value]
    items = [x for v in items for x in (v if isinstance(v, list) else [v])]  # a sweep of lists: [a],[b,c]
    return [str(v) for v in items if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def unknown_choices(args: list[str]) -> str | None:
    """The one-paragraph error for group values that are not options of their group (``experiment=p1x``,
    ``data=synthetc``, also in a sweep: ``experiment=p1a,p1x``); None when all exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(list(args))
    except Exception:  # a syntax error: Hydra's own message says where
        return None
    from hydra.core.override_parser.types import Glob

    picked = [(o.key_or_group, v) for o in overrides if is_group(o.key_or_group) and not o.is_delete()
              for v in chosen_values(o)]  # fmt: skip
    globs = [(o.key_or_group, o) for o in overrides if is_group(o.key_or_group) and isinstance(o.value(), Glob)]
    if not picked and not globs:
        return None
    options = group_options(sorted({group for group, _ in picked + globs}))
    parts = [
        f"{o.input_line} matches none of the {group} options: {', '.join(options[group])}."
        for group, o in globs
        if options[group] and not o.value().filter(options[group])
    ]
    for group, value in picked:
        valid = options[group]
        if value in valid or not valid:  # a group with no options is Hydra's to report
            continue
        close = difflib.get_close_matches(value, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        listed = ", ".join(valid)
        parts.append(f"{group}={value} is not one of the {group} options{hint} The {group} options: {listed}.")
    if not parts:
        return None
    return " ".join(parts) + " `python -m cifar_lab --help` lists every group's options."


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
    model = OmegaConf.select(cfg, "model.name", default=None)
    for key in unknown:
        option = key.removeprefix("model.")
        if key.startswith("model.") and "." not in option and model in MODEL_RULES and models_with(option):
            parts.append(f"{lacking_option(model, option)}.")
            continue
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        parts.append(f"{key} is not an option (Key '{key.rsplit('.', 1)[-1]}' is not in struct){hint}")
    return (
        " ".join(parts) + " Every option is listed in docs/configuration.md, and "
        "`python -m cifar_lab --cfg job [overrides]` prints the composed config. To add a new key on purpose, "
        "prefix it with +."
    )
