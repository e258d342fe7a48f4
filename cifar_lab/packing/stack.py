"""PackedNet: N members of one architecture trained as one vmapped model.

Storage. The pack keeps a copy of each member as a real solo module (``members[k]``), so that
member k's parameters are ordinary leaf ``nn.Parameter``s: one optimiser param group per member
gives it its own lr/momentum/weight decay with any built-in optimiser, and its solo
``state_dict`` (tied-block aliases included) is simply ``members[k].state_dict()``. ``forward``
stacks the members' tensors into (N, ...) and runs one ``vmap(functional_call)`` over a copy of
the architecture on the ``meta`` device, so each kernel does N members' work (convolutions are the
exception: one solo-shaped conv per member by default, see :mod:`cifar_lab.packing.conv`). The stack
costs 0.35 ms (p1a) / 0.56 ms (p2a) per step at N=5 on a 2-core CPU (measured), under 0.1 % of a step.

Buffers. BatchNorm's running statistics are updated in place during the forward, so they must
enter ``functional_call`` as (N, C) / (N,) stacked tensors (``vmap`` writes each member's slice).
The stacked tensor owns the storage, and each member's buffer is re-pointed to a view of its row:
one copy of the state, always current in ``members[k].state_dict()`` and in checkpoints, with no
copy-back step to forget. ``_apply`` (``.to()``, ``.double()``) converts the two separately, so it
re-links the views afterwards. Exports are cloned (``member_state_dict``), so they neither alias
the live pack nor drag the whole (N, C) storage into a saved file.

Dropout. Members may differ in rate, so the base's ``nn.Dropout``/``nn.Identity`` at each dropout
site becomes a :class:`PackedDropout` reading its rate from a stacked (N,) non-persistent buffer;
a member with p = 0 multiplies by exactly 1. The members keep their own ``drop`` modules, so an
export loads into ``create_model("resnet", dropout=p_k)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from cifar_lab.models import create_model
from cifar_lab.packing.conv import CONV_MODES, use_member_convs


class PackedDropout(nn.Module):
    """Dropout whose rate is a (per-member, under vmap) tensor: ``x * bernoulli(1 - p) / (1 - p)``.

    ``F.dropout`` cannot take a tensor rate under vmap (it branches on the value of p); this form
    has no data-dependent control flow, and p = 0 gives a mask of ones and a scale of exactly 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()), persistent=False)  # replaced by the member's rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = (1 - self.p).to(x.dtype)  # () per member; never promotes the activations
        return x * torch.bernoulli(keep.expand(x.shape)) / keep


def dropout_rates(members: Sequence[nn.Module]) -> dict[str, list[float]]:
    """{module name: [p_k]} for every site where some member has ``nn.Dropout``; ``nn.Identity`` is p = 0."""
    sites = sorted({name for m in members for name, mod in m.named_modules() if isinstance(mod, nn.Dropout)})
    rates: dict[str, list[float]] = {}
    for name in sites:
        rates[name] = []
        for k, m in enumerate(members):
            mod = m.get_submodule(name)
            if isinstance(mod, nn.Dropout):
                rates[name].append(float(mod.p))
            elif isinstance(mod, nn.Identity):
                rates[name].append(0.0)
            else:
                raise TypeError(f"member {k}: {name!r} is a {type(mod).__name__}, expected nn.Dropout or nn.Identity")
    return rates


def check_same_shape(members: Sequence[nn.Module]) -> None:
    """Members must share parameter and buffer names and shapes (the architecture shape)."""
    if not members:
        raise ValueError("a pack needs at least one member")

    def signature(m: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, tuple(t.shape), t.dtype) for n, t in [*m.named_parameters(), *m.named_buffers()]]

    first = signature(members[0])
    for k, m in enumerate(members[1:], start=1):
        if type(m) is not type(members[0]) or signature(m) != first:
            raise ValueError(f"member {k} differs from member 0 in architecture shape (parameters/buffers)")


def flat_name(name: str) -> str:
    """A dotted parameter/buffer path as a legal buffer name on the pack."""
    return "stacked__" + name.replace(".", "__")


class PackedNet(nn.Module):
    """N members of one architecture as one model: ``forward`` maps (N, B, 3, 32, 32) or a shared
    (B, 3, 32, 32) batch to logits (N, B, classes).

    The members are deep-copied: the modules passed in are left untouched. ``alive`` (N,) is the
    step engine's record of which members are still training (False after a non-finite loss).
    ``conv`` is how convolutions run: ``"member"`` (one solo-shaped conv per member) or
    ``"grouped"`` (vmap's one grouped conv); see :mod:`cifar_lab.packing.conv`.
    """

    def __init__(self, members: Sequence[nn.Module], conv: str = "member") -> None:
        super().__init__()
        if conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
        check_same_shape(members)
        self.members = nn.ModuleList(copy.deepcopy(m) for m in members)
        self.n = len(members)
        rates = dropout_rates(self.members)
        base = copy.deepcopy(self.members[0]).to("meta")
        if conv == "member":
            use_member_convs(base)
        for name in rates:  # a tied block's site is listed once, and replacing it there replaces every use
            parent, _, leaf = name.rpartition(".")
            setattr(base.get_submodule(parent), leaf, PackedDropout())
        self.__dict__["base"] = base  # unregistered: its meta tensors must not reach parameters()/state_dict()
        self.param_names = [n for n, _ in base.named_parameters()]  # tied tensors once
        self.buffer_names = [n for n, _ in self.members[0].named_buffers()]  # BatchNorm statistics
        for name in self.buffer_names:  # the stacked tensor owns the storage; members get views (link_members)
            stacked = torch.stack([m.get_buffer(name) for m in self.members])  # (N, C) or (N,)
            self.register_buffer(flat_name(name), stacked, persistent=False)
        self.dropout_names = [f"{site}.p" for site in rates]
        for site, ps in rates.items():
            self.register_buffer(flat_name(f"{site}.p"), torch.tensor(ps), persistent=False)  # (N,)
        self.register_buffer("alive", torch.ones(self.n, dtype=torch.bool))
        self.link_members()

    def link_members(self) -> None:
        """Point each member's buffers at its row of the stacked buffers (one storage, always current)."""
        for name in self.buffer_names:
            stacked = self.get_buffer(flat_name(name))
            parent, _, leaf = name.rpartition(".")
            for k, m in enumerate(self.members):
                setattr(m.get_submodule(parent), leaf, stacked[k])

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``.to()``/``.double()`` convert stacked and member buffers separately: re-link the views."""
        super()._apply(fn, recurse)
        self.link_members()
        return self

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """{name: (N, ...)} stacked from the members' own parameters (autograd routes grads back)."""
        per_member = [dict(m.named_parameters()) for m in self.members]
        return {n: torch.stack([p[n] for p in per_member]) for n in self.param_names}

    def statistics(self) -> list[torch.Tensor]:
        """The stacked (N, ...) BatchNorm buffers, in ``buffer_names`` order; the forward updates them in place."""
        return [self.get_buffer(flat_name(n)) for n in self.buffer_names]

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        """{name: (N, ...)}: BatchNorm statistics and dropout rates, as ``functional_call`` takes them."""
        return {n: self.get_buffer(flat_name(n)) for n in [*self.buffer_names, *self.dropout_names]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B, 3, H, W), each member its own batch, or (B, 3, H, W) shared -> (N, B, classes)."""
        if self.base.training != self.training:  # the base is unregistered: Lightning's mode restore misses it
            self.base.train(self.training)
        shared = x.dim() == 4
        if not shared and x.shape[0] != self.n:
            raise ValueError(f"expected a leading member dimension of {self.n}, got shape {tuple(x.shape)}")

        def member(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (xb,))

        run = vmap(member, in_dims=(0, 0, None if shared else 0), randomness="different")
        return run(self.stacked_params(), self.stacked_buffers(), x)

    def penalties(self) -> torch.Tensor:
        """(N,) Σ‖w_k‖² per member over trainable parameters, each tied tensor once (as ``l2_penalty``)."""
        # The one tested definition of the penalty; cifar_lab.task imports Lightning, hence here.
        from cifar_lab.task import l2_penalty

        return torch.stack([l2_penalty(m) for m in self.members])

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k as a solo ``state_dict`` (every tied alias filled, BN statistics included), cloned.

        Aliases stay aliases in the copy (one clone per distinct tensor)."""
        clones: dict[int, torch.Tensor] = {}
        out = {}
        for key, t in self.members[k].state_dict(keep_vars=True).items():  # aliases: the same object
            if id(t) not in clones:
                clones[id(t)] = t.detach().clone()
            out[key] = clones[id(t)]
        return out

    @classmethod
    def from_state_dicts(
        cls, name: str, options: Sequence[Mapping[str, object]], state_dicts: Sequence[Mapping[str, torch.Tensor]]
    ) -> PackedNet:
        """A pack of ``create_model(name, **options[k])`` members loaded (strictly) from solo state_dicts."""
        if len(options) != len(state_dicts):
            raise ValueError(f"{len(options)} option sets for {len(state_dicts)} state_dicts")
        members = []
        for opts, sd in zip(options, state_dicts):
            m = create_model(name, **opts)
            m.load_state_dict(sd, strict=True)
            members.append(m)
        return cls(members)
