"""Each architecture's option choices, declared once: ``cifar_lab.models`` builds from them, and the schema
(which runs before torch is imported, hence this torch-free module) offers exactly these."""

from __future__ import annotations

ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh"}  # the head's activation (model.fc_act) -> its torch.nn class
# model.name -> option -> its choices (the first is the default).
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "cnn3": {"fc_act": tuple(ACTIVATIONS)},
    "resnet": {  # the seed notebook's layouts (docs/fidelity.md)
        "bn_stem": ("conv_bn_relu", "conv_relu_bn"),
        "bn_position": ("after_act", "before_act"),
        "bn_eval": ("running", "batch"),
        "block_init": ("default", "kaiming_normal"),
        "dropout_kind": ("element", "channel"),
    },
}


def choice_problem(model: str, key: str, value: object) -> str | None:
    """Why ``value`` is not one of ``model``'s choices for ``key`` (None: it is one)."""
    choices = CHOICES[model][key]
    return None if value in choices else f"model.{key}={value!r} is not one of: {', '.join(choices)}."
