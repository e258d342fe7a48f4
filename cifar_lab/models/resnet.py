"""The seed's ResNet-like CNN (p2a) and its regularised variants (p2b).

The BatchNorm and dropout options below name the places where the seed's notebook differs from a
textbook layout; docs/fidelity.md gives the measurements behind each preset's choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifar_lab.errors import UserError
from cifar_lab.model_options import choice_problem
from cifar_lab.models.cnn import head
from cifar_lab.models.registry import register_model


class BatchStatNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the batch's statistics in eval mode too (running stats untouched).

    What a loop that never calls ``model.eval()`` would do at validation, minus the running-stat update.
    Training mode is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def make_bn(width: int, momentum: float | None, evaluation: str) -> nn.BatchNorm2d:
    """BatchNorm2d at ``momentum`` (None: cumulative average); ``evaluation="batch"``: batch stats in eval too."""
    cls = BatchStatNorm2d if evaluation == "batch" else nn.BatchNorm2d
    return cls(width, momentum=momentum)


def make_dropout(kind: str, p: float) -> nn.Module:
    """``nn.Dropout2d`` (``channel``: whole channels, the seed's) or ``nn.Dropout`` (``element``), in place.

    In place, on the conv output it follows (whose backward does not need it): the same draws and the
    same bits as out of place, without a new activation tensor. Under glibc's default allocator that
    tensor's fresh pages were most of a channel dropout's cost on the CPU (a step 0.84x as long in place);
    with the heap kept (the fidelity runs' allocator settings) the two measured the same
    (tools/dropout_cost.py; docs/fidelity.md, "What dropout costs on this CPU")."""
    return (nn.Dropout2d if kind == "channel" else nn.Dropout)(p, inplace=True)


class ResBlock(nn.Module):
    """x + bn(relu(dropout(conv(x)))): dropout between conv and activation, BN after it (``bn_position``)."""

    def __init__(
        self,
        width: int,
        dropout: float = 0.0,
        batchnorm: bool = False,
        *,
        bn_position: str = "after_act",
        bn_momentum: float | None = 0.1,
        bn_eval: str = "running",
        conv_bias: bool = True,
        init: str = "default",
        bn_weight_init: float = 1.0,
        dropout_kind: str = "element",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=conv_bias)
        if init == "kaiming_normal":  # the seed's BatchNorm block: kaiming_normal_(nonlinearity="relu")
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        self.drop = make_dropout(dropout_kind, dropout) if dropout > 0 else nn.Identity()
        self.act = nn.ReLU()
        self.norm = make_bn(width, bn_momentum, bn_eval) if batchnorm else nn.Identity()
        if batchnorm:
            nn.init.constant_(self.norm.weight, bn_weight_init)
        self.bn_first = bn_position == "before_act"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.conv(x))
        out = self.act(self.norm(out)) if self.bn_first else self.norm(self.act(out))
        return x + out


@register_model("resnet")
class ResNet(nn.Module):
    """Stem conv + pool, ``n_blocks`` residual blocks, pool, fc 2048->32->10.

    ``tied_blocks=True`` repeats one block instance, as the seed did (76,042 parameters);
    ``False`` gives independent blocks (159,274). The ``bn_*`` options only matter with ``batchnorm``
    on, ``dropout_kind`` / ``stem_dropout`` with ``dropout`` > 0; ``block_conv_bias`` and ``block_init``
    change the block conv of any ResNet. The defaults are the layout cifar_lab started with; the p2b
    presets set the seed notebook's where measurement supports it (docs/fidelity.md).
    """

    def __init__(
        self,
        n_blocks: int = 10,
        width: int = 32,
        tied_blocks: bool = True,
        dropout: float = 0.0,
        batchnorm: bool = False,
        hidden: int = 32,
        num_classes: int = 10,
        bn_stem: str = "conv_bn_relu",
        bn_position: str = "after_act",
        bn_momentum: float | None = 0.1,
        bn_eval: str = "running",
        block_conv_bias: bool = True,
        block_init: str = "default",
        bn_weight_init: float = 1.0,
        dropout_kind: str = "element",
        stem_dropout: bool = False,
    ) -> None:
        super().__init__()
        chosen = dict(bn_stem=bn_stem, bn_position=bn_position, bn_eval=bn_eval, block_init=block_init,
                      dropout_kind=dropout_kind)  # fmt: skip
        if found := [p for key, value in chosen.items() if (p := choice_problem("resnet", key, value))]:
            raise UserError(found[0])
        norm = make_bn(width, bn_momentum, bn_eval) if batchnorm else nn.Identity()
        layers = [nn.Conv2d(3, width, 3, padding=1)]
        if stem_dropout and dropout > 0:  # the seed's dropout stem: conv -> dropout -> relu
            layers.append(make_dropout(dropout_kind, dropout))
        # conv -> BN -> relu, or the seed's BatchNorm stem: conv -> relu -> BN (default keeps the old module indices)
        layers += [nn.ReLU(), norm] if bn_stem == "conv_relu_bn" else [norm, nn.ReLU()]
        self.stem = nn.Sequential(*layers, nn.MaxPool2d(2))  # (B, 32, 16, 16)
        options = dict(
            bn_position=bn_position,
            bn_momentum=bn_momentum,
            bn_eval=bn_eval,
            conv_bias=block_conv_bias,
            init=block_init,
            bn_weight_init=bn_weight_init,
            dropout_kind=dropout_kind,
        )
        if tied_blocks:
            block = ResBlock(width, dropout, batchnorm, **options)
            blocks = [block] * n_blocks  # one weight set, applied n_blocks times
        else:
            blocks = [ResBlock(width, dropout, batchnorm, **options) for _ in range(n_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.MaxPool2d(2)  # (B, 32, 8, 8)
        self.head = head(width * 8 * 8, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))))
