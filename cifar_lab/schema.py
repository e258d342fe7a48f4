"""Checks on the composed config that Hydra cannot make: types and ranges, before anything runs."""

from __future__ import annotations

from numbers import Real

from omegaconf import DictConfig

from cifar_lab.errors import UserError


def _number(value: object, key: str, *, integer: bool = False, low: float | None = None, low_open: bool = True,
            high: float | None = None, high_open: bool = True) -> str | None:
    """An error string if ``value`` is not a number within the given bounds, else None."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else Real):
        return f"{key} must be {kind}, got {value!r}"
    if low is not None and (value <= low if low_open else value < low):
        return f"{key} must be {'>' if low_open else '>='} {low}, got {value}"
    if high is not None and (value >= high if high_open else value > high):
        return f"{key} must be {'<' if high_open else '<='} {high}, got {value}"
    return None


def validate(cfg: DictConfig) -> None:
    """Raise one UserError listing every out-of-range option."""
    checks = [
        _number(cfg.optimizer.get("lr"), "optimizer.lr", low=0),
        _number(cfg.data.get("batch_size"), "data.batch_size", integer=True, low=0),
        _number(cfg.trainer.get("max_epochs"), "trainer.max_epochs", integer=True, low=0),
        _number(cfg.get("l2", 0.0), "l2", low=0, low_open=False),
        _number(cfg.optimizer.get("weight_decay", 0.0), "optimizer.weight_decay", low=0, low_open=False),
        _number(cfg.data.get("val_from_train", 0), "data.val_from_train", integer=True, low=0, low_open=False),
        _number(cfg.get("seed"), "seed", integer=True),
    ]
    if "dropout" in cfg.model:
        checks.append(_number(cfg.model.dropout, "model.dropout (the dropout p)", low=0, low_open=False, high=1))
    for key in ("n_train", "n_test"):
        if key in cfg.data:
            checks.append(_number(cfg.data[key], f"data.{key}", integer=True, low=0))
    if cfg.data.get("num_workers") is not None:
        checks.append(_number(cfg.data.num_workers, "data.num_workers", integer=True, low=0, low_open=False))
    problems = [c for c in checks if c]
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems) + ". Fix the value(s) on the command line or in the config.")
