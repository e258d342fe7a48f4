"""Model registry: every architecture is a plain ``nn.Module`` registered under a name (``models.registry``)."""

from cifar_lab.models import cnn, fc, resnet  # noqa: F401  (their decorators register them)
from cifar_lab.models.registry import _REGISTRY, count_params, create_model, list_models, register_model

__all__ = ["_REGISTRY", "count_params", "create_model", "list_models", "register_model"]
