"""PackedNet: N members of one architecture trained as one vmapped model.

Storage. Each member stays a real solo module (``members[k]``) with ordinary leaf parameters, so one
optimiser param group per member gives it its own hyperparameters with any built-in optimiser, and
its solo ``state_dict`` (tied aliases included) is ``members[k].state_dict()``. ``forward`` stacks
the members' tensors into (N, ...) and runs one ``vmap(functional_call)`` over a copy of the
architecture on the ``meta`` device, so each kernel but the convolutions (:mod:`cifar_lab.packing.conv`)
does N members' work. The stacking costs 0.35 ms (p1a) / 0.56 ms (p2a) per step at N=5 on a
2-core CPU (measured), under 0.1 % of a step.

Buffers. BatchNorm updates its running statistics in place during the forward, so they enter
``functional_call`` as stacked (N, C) tensors that own the storage; each member's buffer is a view
of its row (one copy of the state, always current in ``state_dict()`` and checkpoints).
``_apply`` (``.to()``, ``.double()``) converts the two separately, so it re-links the views.

Dropout. Members may differ in rate, so each dropout site of the base becomes a
:class:`PackedDropout` reading its rate from a stacked (N,) buffer; the members keep their own
``drop`` modules, so an export loads into ``create_model("resnet", dropout=p_k)``.
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
    """Dropout with a tensor rate (per member under vmap, where ``F.dropout`` branches on p and fails):
    ``x * bernoulli(1 - p) / (1 - p)``; p = 0 gives a mask of ones and a scale of exactly 1."""

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
        mods = [m.get_submodule(name) for m in members]
        for k, mod in enumerate(mods):
            if not isinstance(mod, (nn.Dropout, nn.Identity)):
                raise TypeError(f"member {k}: {name!r} is a {type(mod).__name__}, expected nn.Dropout or nn.Identity")
        rates[name] = [float(mod.p) if isinstance(mod, nn.Dropout) else 0.0 for mod in mods]
    return rates


def check_same_shape(members: Sequence[nn.Module]) -> None:
    if not members:
        raise ValueError("a pack needs at least one member")

    def signature(m: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, tuple(t.shape), t.dtype) for n, t in [*m.named_parameters(), *m.named_buffers()]]

    first = signature(members[0])
    for k, m in enumerate(members[1:], start=1):
        if type(m) is not type(members[0]) or signature(m) != first:
            raise ValueError(f"member {k} differs from member 0 in architecture shape (parameters/buffers)")


def flat_name(name: str) -> str:
    return "stacked__" + name.replace(".", "__")


class PackedNet(nn.Module):
    """N members (deep-copied) as one model. ``alive`` (N,): the members still training (the step engine's
    record); ``conv``: ``"member"`` or ``"grouped"`` convolutions (:mod:`cifar_lab.packing.conv`)."""

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
        for name in self.buffer_names:
            stacked = self.get_buffer(flat_name(name))
            parent, _, leaf = name.rpartition(".")
            for k, m in enumerate(self.members):
                setattr(m.get_submodule(parent), leaf, stacked[k])

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
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
        """Member k as a solo ``state_dict``, cloned (not aliasing the live pack nor holding its (N, C) storage);
        tied aliases stay aliases (one clone per distinct tensor)."""
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
        members = [create_model(name, **opts) for opts in options]
        for m, sd in zip(members, state_dicts):
            m.load_state_dict(sd, strict=True)
        return cls(members)
