"""A pack's recording seams, without a subprocess: each member's checkpoint choice follows its own
val/acc (``MemberRun.plan``), and the pack's ``CheckpointIO`` writes a planned checkpoint as the
members' solo-format files and nothing else (``MemberCheckpointIO``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cifar_lab.errors import UserError
from cifar_lab.models import create_model
from cifar_lab.packing import PackedNet, member_param_groups
from cifar_lab.packing.checkpoint import PLAN_KEY, MemberCheckpointIO, pack_checkpoint
from cifar_lab.packing.record import MemberRun
from cifar_lab.resilience import checkpoints


def member(run_dir: Path, index: int = 0) -> MemberRun:
    """A member with only what choosing its checkpoints reads: its two ModelCheckpoint states."""
    return MemberRun(index, run_dir, None, None, None, None, checkpoints(run_dir))  # type: ignore[arg-type]


def test_a_members_best_checkpoint_follows_its_own_val_acc_as_a_solo_model_checkpoint(tmp_path):
    """best.ckpt in an epoch whose val/acc beats every earlier one (a tie does not), last.ckpt every epoch;
    the ModelCheckpoint states (what a solo resume reads) as Lightning's save_top_k=1 leaves them."""
    run = member(tmp_path / "a")
    folder = Path(run.checkpoints[0].dirpath)
    chosen = []
    for score in (0.1, 0.3, 0.2, 0.3, 0.4):
        run.plan(torch.tensor(score))
        chosen.append([Path(f).name for f in run.files])
    assert chosen == [["best.ckpt", "last.ckpt"], ["best.ckpt", "last.ckpt"], ["last.ckpt"], ["last.ckpt"],
                      ["best.ckpt", "last.ckpt"]]  # fmt: skip
    best, last = (cb.state_dict() for cb in run.checkpoints)
    path = str(folder / "best.ckpt")
    assert best["best_model_path"] == best["kth_best_model_path"] == path
    assert (
        float(best["best_model_score"])
        == float(best["kth_value"])
        == float(best["current_score"])
        == float(torch.tensor(0.4))
    )
    assert list(best["best_k_models"]) == [path] and last["best_model_path"] == str(folder / "last.ckpt")
    resumed = member(tmp_path / "a")  # a resume loads the states back (as the pack's callback does)
    for cb, state in zip(resumed.checkpoints, (best, last)):
        cb.load_state_dict(state)
    resumed.plan(torch.tensor(0.35))
    assert [Path(f).name for f in resumed.files] == ["last.ckpt"]
    run.plan(None)  # no validation this epoch: only last.ckpt
    assert [Path(f).name for f in run.files] == ["last.ckpt"]


def test_the_pack_checkpoint_io_writes_each_planned_member_in_the_solo_format(tmp_path):
    torch.manual_seed(0)
    solos = [create_model("resnet", n_blocks=2, width=4, tied_blocks=True, batchnorm=True) for _ in range(2)]
    net = PackedNet(solos)
    opt = torch.optim.SGD(member_param_groups(net, lr=[0.1, 0.2], momentum=[0.9, 0.9]))
    net(torch.randn(2, 4, 3, 32, 32)).sum().backward()  # one step: momentum state and BN statistics
    opt.step()
    pack = {
        "epoch": 0,
        "global_step": 1,
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "callbacks": {"RngState": {"torch": torch.get_rng_state()}},
    }
    files = [tmp_path / "m1" / "best.ckpt", tmp_path / "m1" / "last.ckpt"]
    own = {"callbacks": {"ModelCheckpoint{x}": {"monitor": "val/acc"}}, "hyper_parameters": {"lr": 0.2},
           "hparams_name": None, "cifar_lab": {"config": {"seed": 1}, "data": "fp"}}  # fmt: skip
    io = MemberCheckpointIO()
    io.save_checkpoint({**pack, PLAN_KEY: [{"index": 1, "files": [str(f) for f in files], "own": own}]}, tmp_path / "p")
    assert not (tmp_path / "p").exists() and all(f.is_file() for f in files)
    written = io.load_checkpoint(files[1])
    assert PLAN_KEY not in written and written["hyper_parameters"] == {"lr": 0.2} and written["epoch"] == 0
    assert written["callbacks"].keys() == {"RngState", "ModelCheckpoint{x}"} and written["cifar_lab"]["data"] == "fp"
    assert torch.equal(written["callbacks"]["RngState"]["torch"], pack["callbacks"]["RngState"]["torch"])
    solo = create_model("resnet", n_blocks=2, width=4, tied_blocks=True, batchnorm=True)
    solo.load_state_dict({k.removeprefix("net."): v for k, v in written["state_dict"].items()}, strict=True)
    for key, t in net.member_state_dict(1).items():
        assert torch.equal(solo.state_dict()[key], t), key
    for t in written["state_dict"].values():  # its own storage only, not the pack's stacked BN statistics
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    (group,) = written["optimizer_states"][0]["param_groups"]
    assert group["lr"] == 0.2 and group["params"] == list(range(len(list(solo.parameters()))))
    first = [p for p in net.members[1].parameters()][0]
    assert torch.equal(
        written["optimizer_states"][0]["state"][0]["momentum_buffer"], opt.state[first]["momentum_buffer"]
    )

    io.save_checkpoint({**pack, PLAN_KEY: [{"index": 0, "files": [str(tmp_path / "m0.ckpt")], "own": own}]}, "x")
    back = pack_checkpoint([io.load_checkpoint(tmp_path / "m0.ckpt"), written], "records")
    for key, t in pack["state_dict"].items():
        assert torch.equal(back["state_dict"][key], t), key
    # A resuming pack's fit loads the pack's checkpoint put together from its members' files, written nowhere.
    resuming = MemberCheckpointIO([str(tmp_path / "m0.ckpt"), str(files[1])], "records")
    loaded = resuming.load_checkpoint(files[1])
    assert loaded["callbacks"].keys() == {"RngState", "records"} and loaded["global_step"] == 1
    assert [m["ModelCheckpoint{x}"] for m in loaded["callbacks"]["records"]["members"]] == [{"monitor": "val/acc"}] * 2
    for key, t in pack["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], t), key
    later = {**written, "epoch": 1}
    io.save_checkpoint(later, tmp_path / "later.ckpt")
    with pytest.raises(UserError, match=r"different points \(epoch, step\): \[\(0, 1\), \(1, 1\)\]; run the sweep"):
        MemberCheckpointIO([str(tmp_path / "m0.ckpt"), str(tmp_path / "later.ckpt")], "records").load_checkpoint("x")
    io.save_checkpoint(pack, tmp_path / "plain.ckpt")  # no plan: written as it is
    assert io.load_checkpoint(tmp_path / "plain.ckpt")["state_dict"].keys() == pack["state_dict"].keys()


def test_a_pack_that_stops_before_its_trainer_exists_records_each_member_with_that_outcome(tmp_path):
    """A refusal before the fit (here the mixed-resume one) has no trainer to ask why it stopped early: each
    member still training gets the pack's outcome, and the exit code is the outcome's."""
    from cifar_lab.errors import outcome_of
    from cifar_lab.lifecycle import summary_fields
    from cifar_lab.packing.run import finish
    from cifar_lab.recording import EpochWriter
    from cifar_lab.summary import RunSummary
    from tests.conftest import FAST, compose_cfg, load_summary

    cfg = compose_cfg("experiment=p1a", *FAST)
    summary = RunSummary(tmp_path, summary_fields(cfg, tmp_path, []), write_now=False)
    run = MemberRun(0, tmp_path, cfg, None, summary, EpochWriter(tmp_path, summary, {}, True), checkpoints(tmp_path))  # type: ignore[arg-type]
    outcome = outcome_of(UserError("some members of this pack have a checkpoints/last.ckpt to resume from"))
    assert finish([run], outcome, None) == outcome.exit_code != 0
    assert load_summary(tmp_path)["status"] == "failed" and "last.ckpt" in load_summary(tmp_path)["error"]
