"""A member's checkpoint in the solo format, cut from the pack's; and a pack's, put together from its members'.

A member's file holds its own ``net.*`` weights (tied aliases kept), its param group's optimizer
state, ModelCheckpoint states, hyperparameters and identity; the loops and RNG state are the pack's,
which are the member's (lockstep), but for the CPU generator state: the member's own dropout generator's
(:data:`RNG_KEY`), which is what its solo run's global generator would hold. So ``load_from_checkpoint``
and a solo ``resume=true`` read it, and a resuming pack's members draw on from their own states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cifar_lab.errors import UserError
from cifar_lab.resilience import AtomicCheckpointIO
from cifar_lab.resume import IDENTITY_KEY

Checkpoint = dict[str, Any]
HPARAMS_KEYS = ("hyper_parameters", "hparams_name", "hparams_type")
# Entries that belong to one run: cut per member from the pack, put back together for the pack.
OWN_KEYS = ("state_dict", "optimizer_states", "callbacks", IDENTITY_KEY, *HPARAMS_KEYS)
PLAN_KEY = "cifar_lab_members"  # [{"index": k, "files": [...], "own": {...}}]: the member files to write
RNG_KEY = "cifar_lab_member_rng"  # the pack's: [each member's dropout generator state] (PackedModule)
RNG_CALLBACK = "RngState"  # resilience.RngState's state key: {"torch": the CPU generator state, ...}


def member_weights(state_dict: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Member k's solo ``net.*`` state_dict, cloned out of the pack's: aliases (tied blocks) stay aliases,
    and no member's file holds another member's storage."""
    prefix, clones, out = f"net.members.{k}.", {}, {}
    for key, t in state_dict.items():
        if key.startswith(prefix):
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            if ident not in clones:
                clones[ident] = t.detach().clone()
            out[f"net.{key.removeprefix(prefix)}"] = clones[ident]
    return out


def member_optimizer_state(pack: dict[str, Any], k: int) -> dict[str, Any]:
    """Member k's param group of the pack's optimizer state, as a one-group solo optimizer state."""
    group = pack["param_groups"][k]
    ids = group["params"]
    state = {i: pack["state"][pid] for i, pid in enumerate(ids) if pid in pack["state"]}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(ids)))}]}


def pack_optimizer_state(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The members' one-group optimizer states as the pack's (group k = member k, ids renumbered in order)."""
    state: dict[int, Any] = {}
    groups = []
    offset = 0
    for opt in members:
        (group,) = opt["param_groups"]
        groups.append({**group, "params": [offset + i for i in group["params"]]})
        state.update({offset + i: s for i, s in opt["state"].items()})
        offset += len(group["params"])
    return {"state": state, "param_groups": groups}


def member_checkpoint(pack: Checkpoint, k: int, own: dict[str, Any]) -> Checkpoint:
    """Member k's solo checkpoint from the pack's and its ``own`` entries (its callback states beside the
    pack's shared ones, its hyperparameters and identity)."""
    out = {key: value for key, value in pack.items() if key not in (*OWN_KEYS, PLAN_KEY, RNG_KEY)}
    out["state_dict"] = member_weights(pack["state_dict"], k)
    out["optimizer_states"] = [member_optimizer_state(pack["optimizer_states"][0], k)]
    out.update(own, callbacks={**pack.get("callbacks", {}), **own["callbacks"]})
    if RNG_KEY in pack and RNG_CALLBACK in out["callbacks"]:
        out["callbacks"][RNG_CALLBACK] = {**out["callbacks"][RNG_CALLBACK], "torch": pack[RNG_KEY][k]}
    return out


class MemberCheckpointIO(AtomicCheckpointIO):
    """The pack's checkpoint I/O: a checkpoint with a plan (:data:`PLAN_KEY`) is written as the planned
    members' solo checkpoints, each atomically; any other as it is. With ``resume`` (the members' ``last.ckpt``),
    a load (the fit's resume) gives the pack's checkpoint put together from those, with no file of its own."""

    def __init__(self, resume: Sequence[str] = (), recorder_key: str = "") -> None:
        super().__init__()
        self.resume, self.recorder_key = list(resume), recorder_key

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if PLAN_KEY not in checkpoint:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        for entry in checkpoint[PLAN_KEY]:
            member = member_checkpoint(checkpoint, entry["index"], entry["own"])
            for file in entry["files"]:
                super().save_checkpoint(member, file, storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        load = super().load_checkpoint
        if not self.resume:
            return load(path, *args, **kwargs)
        return pack_checkpoint([load(p, *args, **kwargs) for p in self.resume], self.recorder_key)


def pack_checkpoint(members: Sequence[Checkpoint], recorder_key: str) -> Checkpoint:
    """The pack's checkpoint from its members' ``last.ckpt`` (at one epoch and step); the members' callback
    states go to the pack's recorder callback (``recorder_key``), in order."""
    first = members[0]
    steps = {(m.get("epoch"), m.get("global_step")) for m in members}
    if len(steps) != 1:
        raise UserError(
            f"the members' checkpoints are at different points (epoch, step): {sorted(steps)}; run the sweep again "
            "with resume=auto, which packs them apart."
        )
    out = {key: value for key, value in first.items() if key not in OWN_KEYS}
    state_dict = {}
    for k, m in enumerate(members):
        state_dict.update({f"net.members.{k}.{name.removeprefix('net.')}": t for name, t in m["state_dict"].items()})
    state_dict["net.alive"] = torch.ones(len(members), dtype=torch.bool)
    out["state_dict"] = state_dict
    out["optimizer_states"] = [pack_optimizer_state([m["optimizer_states"][0] for m in members])]
    shared = {key: v for key, v in first["callbacks"].items() if not key.startswith("ModelCheckpoint")}  # the pack's
    out["callbacks"] = {**shared, recorder_key: {"members": [m["callbacks"] for m in members]}}
    if all(RNG_CALLBACK in m["callbacks"] for m in members):
        out[RNG_KEY] = [m["callbacks"][RNG_CALLBACK]["torch"] for m in members]
    return out
