"""Every registered model: exact parameter counts, forward shape, finite output."""

from __future__ import annotations

import pytest
import torch

from cifar_lab.errors import UserError
from cifar_lab.model_options import CHOICES
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
    assert type(drop.blocks[0].drop) is torch.nn.Dropout and drop.blocks[0].drop.p == 0.3


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


# ---- options that reproduce the seed's notebook (docs/fidelity.md) ----

SEED_BN = dict(
    batchnorm=True, bn_stem="conv_relu_bn", block_conv_bias=False, block_init="kaiming_normal", bn_weight_init=0.5
)


def small_resnet(**kwargs):
    torch.manual_seed(0)
    return create_model("resnet", n_blocks=2, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batchnorm": True, "bn_stem": "conv_relu_bn"},
        {"batchnorm": True, "bn_position": "before_act"},
        {"batchnorm": True, "bn_momentum": None},
        {"batchnorm": True, "bn_momentum": 0.01},
        {"batchnorm": True, "bn_eval": "batch"},
        {"batchnorm": True, "block_init": "kaiming_normal", "bn_weight_init": 0.5},
        {"dropout": 0.3, "dropout_kind": "channel", "stem_dropout": True},
    ],
)
def test_resnet_options_keep_shape_and_count(kwargs):
    net = create_model("resnet", **kwargs)
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert count_params(net) == (76_170 if kwargs.get("batchnorm") else 76_042)


def test_seed_batchnorm_block_has_no_conv_bias():
    net = create_model("resnet", **SEED_BN)
    assert net.blocks[0].conv.bias is None
    assert count_params(net) == 76_138  # the seed notebook prints 76.14 k for its BatchNorm model
    assert torch.all(net.blocks[0].norm.weight == 0.5)


def test_bn_stem_order():
    ours, seed = create_model("resnet", batchnorm=True), create_model("resnet", **SEED_BN)
    assert [type(m) for m in ours.stem] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d]
    assert [type(m) for m in seed.stem] == [torch.nn.Conv2d, torch.nn.ReLU, torch.nn.BatchNorm2d, torch.nn.MaxPool2d]
    assert (seed.stem[:3](torch.randn(2, 3, 32, 32)).mean((0, 2, 3)).abs() < 1e-5).all()  # BN output, train mode


def test_bn_position_changes_the_block():
    x = torch.randn(4, 32, 8, 8)
    after = small_resnet(batchnorm=True).blocks[0]
    before = small_resnet(batchnorm=True, bn_position="before_act").blocks[0]
    assert (after(x) - x).mean((0, 2, 3)).abs().max() < 1e-5  # BN output (zero mean) is added to x
    assert ((before(x) - x) >= 0).all()  # the ReLU comes last: a non-negative residual
    assert before.conv.weight.equal(after.conv.weight)


def test_bn_momentum_is_passed_to_every_batchnorm():
    for momentum in (None, 0.01):
        bns = [
            m
            for m in create_model("resnet", batchnorm=True, bn_momentum=momentum).modules()
            if isinstance(m, torch.nn.BatchNorm2d)
        ]
        assert len(bns) == 2 and all(bn.momentum == momentum for bn in bns)


def test_bn_eval_batch_uses_batch_statistics_and_leaves_running_stats():
    torch.manual_seed(1)
    running, batch = small_resnet(batchnorm=True), small_resnet(batchnorm=True, bn_eval="batch")
    batch.load_state_dict(running.state_dict())
    x = 3 * torch.randn(8, 3, 32, 32) + 1  # far from the initial running stats (0, 1)
    running(x), batch(x)  # one training-mode step updates the running stats of both
    running.eval(), batch.eval()
    before = {k: v.clone() for k, v in batch.state_dict().items()}
    with torch.no_grad():
        out_batch, out_running = batch(x), running(x)
    assert not torch.allclose(out_batch, out_running, atol=1e-4)
    assert all(before[k].equal(v) for k, v in batch.state_dict().items())  # running stats untouched
    bn = batch.stem[1]
    h = batch.stem[0](x)
    ref = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    assert torch.allclose(bn(h), ref * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1), atol=1e-4)
    batch.train()
    assert torch.allclose(batch(x), running.train()(x), atol=1e-5)  # training is plain BatchNorm


def test_channel_dropout_and_stem_dropout():
    net = create_model("resnet", dropout=0.3, dropout_kind="channel", stem_dropout=True)
    assert isinstance(net.blocks[0].drop, torch.nn.Dropout2d) and isinstance(net.stem[1], torch.nn.Dropout2d)
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in create_model("resnet", dropout=0.3).modules())


@pytest.mark.parametrize(
    "layout", [{"dropout_kind": "channel", "stem_dropout": True}, {"dropout_kind": "element"}], ids=["seed", "element"]
)
def test_dropout_in_place_draws_and_computes_the_bits_of_dropout_out_of_place(layout):
    """The ResNet's dropout runs in place (cheaper); from the same RNG state it takes the same draws and gives
    the same output and gradients, bit for bit, as nn.Dropout2d / nn.Dropout out of place (the layout as it
    was), channels_last as the fidelity runs train."""
    torch.manual_seed(0)
    net = create_model("resnet", dropout=0.3, **layout).to(memory_format=torch.channels_last).train()
    drops = [m for m in net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert drops and all(m.inplace for m in drops)
    x = torch.randn(16, 3, 32, 32).to(memory_format=torch.channels_last)
    runs = []
    for inplace in (True, False):
        for m in drops:
            m.inplace = inplace
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = net(x)
        out.square().sum().backward()
        runs.append((out.detach(), [p.grad for p in net.parameters()], torch.get_rng_state()))
    (out_in, grads_in, rng_in), (out_off, grads_off, rng_off) = runs
    assert torch.equal(out_in, out_off) and torch.equal(rng_in, rng_off)  # same output, same draws consumed
    assert all(torch.equal(a, b) for a, b in zip(grads_in, grads_off, strict=True))
    for m in drops:
        m.inplace = True
    torch.manual_seed(2)
    assert not torch.equal(net(x), out_in)  # other draws, another output: the comparison can fail


def test_cnn3_fc_activation():
    torch.manual_seed(0)
    tanh, relu = create_model("cnn3", fc_act="tanh"), create_model("cnn3")
    assert isinstance(tanh.head[2], torch.nn.Tanh) and isinstance(relu.head[2], torch.nn.ReLU)
    assert count_params(tanh) == count_params(relu) == 11_138
    assert tanh(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("resnet", "bn_stem", "bn_conv_relu"),
        ("resnet", "bn_eval", "train"),
        ("resnet", "bn_position", "x"),
        ("cnn3", "fc_act", "gelu"),
    ],
)
def test_model_option_choices_are_checked(name, key, value):
    with pytest.raises(UserError, match=key):
        create_model(name, **{key: value})


@pytest.mark.parametrize("name, key", [(name, key) for name, options in CHOICES.items() for key in options])
def test_the_schema_and_the_model_take_each_choice_and_refuse_another(name, key):
    """One declaration (model_options.CHOICES): the schema, before torch, and the model agree on it."""
    from omegaconf import OmegaConf

    from cifar_lab.schema import problems

    for choice in CHOICES[name][key]:
        assert problems(OmegaConf.create({"model": {"name": name, key: choice}})) == []
        create_model(name, **{key: choice})
    found = problems(OmegaConf.create({"model": {"name": name, key: "nope"}}))
    assert len(found) == 1 and found[0].startswith(f"model.{key} must be one of {', '.join(CHOICES[name][key])}")
    with pytest.raises(UserError, match=f"model.{key}='nope' is not one of"):
        create_model(name, **{key: "nope"})
