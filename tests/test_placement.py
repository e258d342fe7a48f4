"""One owner per decision: where a run trains (distributed.placement) and what an optimizer allows (plan.OPTIMIZERS),
read the same way by the solo run, the packed launcher's grouping and the bench."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cifar_lab.distributed import placement
from cifar_lab.errors import UserError
from cifar_lab.packing.grouping import unpackable
from cifar_lab.plan import OPTIMIZERS, OptimizerCapability, optimizer_capability
from tests.conftest import FAST, run_cli

# (trainer options, several processes?, one device with the default strategy?)
CASES = [
    ({"devices": 1}, False, True),
    ({"devices": [0]}, False, True),
    ({"devices": "1"}, False, True),
    ({"devices": "0,"}, False, True),
    ({"devices": [0, 1]}, True, False),
    ({"devices": "0,1"}, True, False),
    ({"devices": 2}, True, False),
    ({"devices": "auto", "accelerator": "gpu"}, True, False),
    ({"devices": "auto", "accelerator": "auto"}, True, False),
    ({"devices": "auto", "accelerator": "cpu"}, False, True),  # Lightning counts one CPU device
    ({"devices": -1, "accelerator": "gpu"}, True, False),
    ({"devices": 1, "accelerator": "cpu"}, False, True),
    ({"devices": 1, "num_nodes": 2}, True, False),
    ({"devices": 1, "strategy": "ddp"}, True, False),
    ({"devices": 1, "strategy": "ddp_spawn"}, True, False),
    ({"devices": 1, "strategy": "single_device"}, False, False),  # one device, but not the strategy a pack runs
    ({}, False, True),
]


@pytest.mark.parametrize(("trainer", "several", "one"), CASES)
def test_placement_reads_every_form_of_devices(trainer, several, one):
    where = placement(OmegaConf.create(trainer))  # a config node, as train.py and bench.py pass it
    assert (where.several, where.one_device) == (several, one), where
    assert placement(dict(trainer)) == where  # a plain mapping, as grouping passes it


@pytest.mark.parametrize(("trainer", "several", "one"), CASES)
def test_grouping_packs_exactly_the_one_device_runs(trainer, several, one):
    task = {"optimizer._target_": "torch.optim.SGD", **{f"trainer.{k}": v for k, v in trainer.items()}}
    reason = unpackable(task, {})
    assert (reason is None) == one, reason
    if not one:
        assert "several devices or a strategy" in reason


BAD = [{"devices": 1.5}, {"devices": ""}, {"devices": 0}, {"devices": "[0]"}, {"devices": True}, {"devices": []},
       {"devices": ["a"]}, {"devices": -2}, {"devices": "x"}, {"devices": 1, "num_nodes": "two"}]  # fmt: skip


@pytest.mark.parametrize("trainer", BAD)
def test_values_that_name_no_devices_are_one_paragraph_and_never_pack(trainer):
    with pytest.raises(UserError, match="names no devices"):
        placement(OmegaConf.create(trainer))
    task = {"optimizer._target_": "torch.optim.SGD", **{f"trainer.{k}": v for k, v in trainer.items()}}
    assert unpackable(task, {}) == "trainer.devices or num_nodes names no devices"  # its own start refuses it


def test_a_run_with_devices_that_name_none_is_refused_in_one_paragraph(tmp_path):
    res = run_cli(tmp_path, *FAST, "experiment=p1a", "trainer.devices=1.5")
    assert res.returncode == 2 and "trainer.devices=1.5" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_the_bench_refuses_several_devices(tmp_path):
    res = run_cli(tmp_path, "trainer=cpu", "trainer.devices=2", "bench.pipelines=[raw]", module="cifar_lab.bench")
    assert res.returncode == 2 and "the bench times one device" in res.stderr and "Traceback" not in res.stderr


def test_one_optimizer_table_answers_graph_pack_and_prime():
    sgd, adam, adamw = (optimizer_capability(c) for c in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW))
    assert sgd == optimizer_capability("torch.optim.SGD") == OPTIMIZERS["torch.optim.SGD"]
    assert (sgd.graph, sgd.pack, sgd.prime, sgd.device_step) == (True, True, "momentum", False)
    assert adam == adamw and (adam.graph, adam.pack, adam.prime, adam.device_step) == (False, True, "adam", True)
    for other in (torch.optim.RMSprop, "torch.optim.RMSprop", "my.Optimizer", None):
        assert not optimizer_capability(other).pack and not optimizer_capability(other).graph
    assert "packs support torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW" in unpackable(
        {"optimizer._target_": "torch.optim.RMSprop"}, {}
    )


def test_the_packed_step_primes_by_the_table(monkeypatch):
    """packing.step primes an optimizer's state by its row of the table, not by its own list of classes."""
    from cifar_lab.packing import step

    params = [torch.nn.Parameter(torch.ones(2))]
    step.prime_optimizer_state(torch.optim.SGD(params, lr=0.1, momentum=0.9))  # in the table: primed
    with pytest.raises(TypeError, match="isolation supports"):
        step.prime_optimizer_state(torch.optim.RMSprop(params, lr=0.1))
    monkeypatch.setitem(OPTIMIZERS, "torch.optim.SGD", OptimizerCapability())  # out of the table: refused too
    with pytest.raises(TypeError, match="isolation supports"):
        step.prime_optimizer_state(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9))
