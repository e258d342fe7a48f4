"""Every registered model: exact parameter counts, forward shape, finite output."""

from __future__ import annotations

import pytest
import torch

from cifar_lab.errors import UserError
from cifar_lab.models import count_params, create_model, list_models, register_model

# SEED.md's exact counts (they reproduce the seed's rounded figures).
EXPECTED = {
    ("fc", ()): 1_578_506,
    ("cnn", ()): 38_650,
    ("cnn3", ()): 11_138,
    ("resnet", ()): 76_042,
    ("resnet", (("tied_blocks", False),)): 159_274,
}


@pytest.mark.parametrize(("name", "kwargs"), list(EXPECTED))
def test_parameter_counts(name, kwargs):
    assert count_params(create_model(name, **dict(kwargs))) == EXPECTED[(name, kwargs)]


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_finite(name):
    torch.manual_seed(0)
    logits = create_model(name)(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()


def test_every_model_has_a_config_and_a_count():
    assert {n for n, _ in EXPECTED} == set(list_models())


def test_tied_blocks_share_one_weight_set():
    tied = create_model("resnet", tied_blocks=True)
    assert tied.blocks[0] is tied.blocks[9]
    untied = create_model("resnet", tied_blocks=False)
    assert untied.blocks[0].conv.weight.data_ptr() != untied.blocks[1].conv.weight.data_ptr()


def test_resnet_regularisers_change_the_model():
    bn = create_model("resnet", batchnorm=True)
    assert count_params(bn) == 76_042 + 2 * 64  # one BN after the stem, one shared by the tied blocks
    drop = create_model("resnet", dropout=0.3)
    assert isinstance(drop.blocks[0].drop, torch.nn.Dropout) and drop.blocks[0].drop.p == 0.3


def test_registry_refuses_duplicates_and_unknowns():
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn")(torch.nn.Identity)
    with pytest.raises(UserError, match="Valid models: cnn, cnn3, fc, resnet"):
        create_model("vgg")
    with pytest.raises(UserError, match="does not take"):
        create_model("fc", dropout=0.3)


def test_l2_penalty_counts_each_shared_tensor_once():
    from cifar_lab.task import l2_penalty

    net = create_model("resnet", n_blocks=3)
    expected = sum(float(p.detach().pow(2).sum()) for p in net.parameters())  # parameters() dedups tied blocks
    assert float(l2_penalty(net)) == pytest.approx(expected, rel=1e-5)
    assert len(list(net.parameters())) == 2 + 2 + 4  # stem conv, one tied block conv, two fc layers
