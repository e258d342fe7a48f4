"""The registry: every architecture is a plain ``nn.Module`` registered under a name."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from cifar_lab.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator adding an architecture to the registry; duplicate names are refused."""

    def wrap(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; unknown names and options are user errors that list the valid ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}. Valid models: {', '.join(list_models())}.")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(
            f"model {name!r} does not take the option(s) {', '.join(unknown)} "
            f"(it takes: {', '.join(accepted) or 'none'}). Dropout and BatchNorm regularisers "
            "apply to model=resnet only."
        )
    return cls(**kwargs)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once (as ``model.parameters()`` yields them)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
