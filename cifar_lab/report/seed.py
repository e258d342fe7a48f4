"""The seed's published numbers, shipped as package data: SEED.md's table and the seed's logged curves."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

REAL_SOURCES = ("cifar10", "image_folder")  # data a comparison with the seed can mean something on
UNITS = {"k": 1e3, "M": 1e6}


@cache
def seed_table() -> dict[str, Any]:
    """seed_table.json: final numbers after 300 epochs (accuracies in percent, as published)."""
    return json.loads(resources.files(__package__).joinpath("seed_table.json").read_text())


@cache
def seed_curves() -> dict[str, list[dict[str, float]]]:
    """The seed's logged epochs (1, 10, ..., 300) per preset, accuracies converted to fractions like ours."""
    raw = json.loads(resources.files(__package__).joinpath("seed_curves.json").read_text())["curves"]
    return {
        name: [{**p, "train_acc": p["train_acc"] / 100, "val_acc": p["val_acc"] / 100} for p in points]
        for name, points in raw.items()
    }


def seed_entry(experiment: str) -> dict[str, Any] | None:
    return seed_table()["experiments"].get(experiment)


def params_text(entry: dict[str, Any]) -> str:
    approx = "≈" if "params" in entry.get("approx", []) else ""
    return f"{approx}{entry['params']:g} {entry['params_unit']}"


def params_match(ours: float, entry: dict[str, Any]) -> bool:
    """Whether our exact count rounds to the seed's published figure (published to its shown decimals)."""
    published = f"{entry['params']:g}"
    decimals = len(published.split(".")[1]) if "." in published else 0
    return round(ours / UNITS[entry["params_unit"]], decimals) == entry["params"]


def seed_differences(experiment: str) -> list[str]:
    """What still differs between our run of ``experiment`` and the seed's, as measured (docs/fidelity.md);
    ``"all"``: what differs for every experiment (how the seed validated, its data)."""
    return list(seed_table().get("differences", {}).get(experiment, []))
