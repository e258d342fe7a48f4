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

Dropout. Members may differ in rate and kind (element or channel), and some may have a site (the
stem's) that others lack, so each dropout site of the base becomes a :class:`PackedDropout` that
knows every member's rate and kind there (0 where a member has none). Under ``vmap`` it steps out to
one solo-shaped dropout per member (:class:`MemberDropout`, as member convs do): member k's mask is
drawn exactly as its solo ``nn.Dropout`` / ``nn.Dropout2d`` draws it, from member k's own generator
on the CPU, whose state starts as its solo run's global RNG state (``rng_states``), so member k's
masks are its solo run's. Off the CPU each member draws its own masks from the device's default
generator (one CUDA graph can replay them), not its solo run's. The members keep their own ``drop``
modules, so an export loads into ``create_model("resnet", dropout=p_k, ...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from cifar_lab.models import create_model
from cifar_lab.packing.conv import CONV_MODES, use_member_convs

DROPOUT_KINDS = {nn.Dropout: "element", nn.Dropout2d: "channel"}  # nn.Identity: rate 0


class MemberRng:
    """Each member's dropout generator (CPU), shared by every dropout site of a pack."""

    def __init__(self, states: Sequence[torch.Tensor]) -> None:
        self.generators = [torch.Generator() for _ in states]
        self.set_states(states)

    def set_states(self, states: Sequence[torch.Tensor]) -> None:
        if len(states) != len(self.generators):
            raise ValueError(f"{len(states)} RNG states for {len(self.generators)} members")
        for g, state in zip(self.generators, states):
            g.set_state(state)

    def states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]


def member_dropout(x: torch.Tensor, p: float, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """One member's dropout, drawn and applied as ``F.dropout`` / ``F.dropout2d`` do on the CPU (ATen's
    ``_dropout_impl``: a noise tensor, ``bernoulli_(1 - p)``, ``div_(1 - p)``, ``x * noise``), so the same
    generator state gives the same mask, bit for bit; ``channel``: noise of shape (B, C, 1, 1)."""
    if p == 0:
        return x
    noise = x.new_empty((*x.shape[:2], *[1] * (x.dim() - 2))) if kind == "channel" else torch.empty_like(x)
    noise.bernoulli_(1 - p, generator=generator).div_(1 - p)
    return x * noise


class MemberDropout(torch.autograd.Function):
    """A pack's dropout under ``vmap``: one :func:`member_dropout` per member, recorded by autograd (the
    backward is each member's ``grad * noise``); outside ``vmap`` there are no members, so it refuses."""

    @staticmethod
    def forward(x: torch.Tensor, site: PackedDropout) -> torch.Tensor:
        raise RuntimeError("MemberDropout runs inside a pack's vmapped forward only")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # never reached: forward refuses
        raise RuntimeError("MemberDropout runs inside a pack's vmapped forward only")

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, site: PackedDropout):  # type: ignore[no-untyped-def]
        if info.batch_size != len(site.rates):
            raise ValueError(f"a dropout site of {len(site.rates)} members under a vmap of {info.batch_size}")
        xs = [x] * info.batch_size if in_dims[0] is None else x.unbind(in_dims[0])  # unbind: see MemberConv
        own = x.device.type == "cpu"  # member generators on the CPU; the device's default one elsewhere
        gens = site.rng.generators if own else [None] * info.batch_size
        out = [member_dropout(xk, p, kind, g) for xk, p, kind, g in zip(xs, site.rates, site.kinds, gens)]
        return torch.stack(out), 0


class PackedDropout(nn.Module):
    """One dropout site of a pack: member k drops with ``rates[k]`` (0: unchanged) and ``kinds[k]``
    (``element`` or ``channel``) and draws from ``rng``'s generator k (:class:`MemberDropout`)."""

    def __init__(self, rates: Sequence[float], kinds: Sequence[str], rng: MemberRng) -> None:
        super().__init__()
        self.rates, self.kinds, self.rng = [float(p) for p in rates], list(kinds), rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.rates):
            return x
        return MemberDropout.apply(x, self)


def dropout_sites(members: Sequence[nn.Module]) -> dict[str, tuple[list[float], list[str]]]:
    """{module name: ([p_k], [kind_k])} for every site where some member has dropout; a member with no
    dropout module there (``nn.Identity``, or a stem without dropout) has rate 0. Grouping packs only
    members whose layouts differ in dropout alone, so the sites are where the widest member has them."""
    sites = sorted({name for m in members for name, mod in m.named_modules() if type(mod) in DROPOUT_KINDS})
    out: dict[str, tuple[list[float], list[str]]] = {}
    for name in sites:
        mods = [dict(m.named_modules()).get(name) for m in members]
        rates = [float(mod.p) if type(mod) in DROPOUT_KINDS else 0.0 for mod in mods]  # type: ignore[union-attr]
        out[name] = (rates, [DROPOUT_KINDS.get(type(mod), "element") for mod in mods])
    return out


def widest(members: Sequence[nn.Module]) -> nn.Module:
    """The member with the most dropout modules: the architecture copy that holds every member's sites."""
    return max(members, key=lambda m: sum(type(mod) in DROPOUT_KINDS for mod in m.modules()))


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
    record); ``conv``: ``"member"`` or ``"grouped"`` convolutions (:mod:`cifar_lab.packing.conv`);
    ``rng_states``: each member's dropout generator state (its solo run's global RNG state when its
    training starts); None: states drawn from the global generator (each member its own masks)."""

    def __init__(
        self, members: Sequence[nn.Module], conv: str = "member", rng_states: Sequence[torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        if conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
        check_same_shape(members)
        self.members = nn.ModuleList(copy.deepcopy(m) for m in members)
        self.n = len(members)
        if rng_states is None:
            rng_states = [torch.Generator().manual_seed(int(s)).get_state() for s in torch.randint(2**62, (self.n,))]
        if len(rng_states) != self.n:
            raise ValueError(f"{len(rng_states)} RNG states for {self.n} members")
        self.rng = MemberRng(rng_states)
        sites = dropout_sites(self.members)
        base = copy.deepcopy(widest(self.members)).to("meta")
        if conv == "member":
            use_member_convs(base)
        for name, (rates, kinds) in sites.items():  # a tied block's site is listed once: replaced at every use
            parent, _, leaf = name.rpartition(".")
            setattr(base.get_submodule(parent), leaf, PackedDropout(rates, kinds, self.rng))
        self.__dict__["base"] = base  # unregistered: its meta tensors must not reach parameters()/state_dict()
        self.param_names = [n for n, _ in base.named_parameters()]  # tied tensors once
        self.buffer_names = [n for n, _ in self.members[0].named_buffers()]  # BatchNorm statistics
        for name in self.buffer_names:  # the stacked tensor owns the storage; members get views (link_members)
            stacked = torch.stack([m.get_buffer(name) for m in self.members])  # (N, C) or (N,)
            self.register_buffer(flat_name(name), stacked, persistent=False)
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
        """{name: (N, ...)}: the BatchNorm statistics, as ``functional_call`` takes them."""
        return {n: self.get_buffer(flat_name(n)) for n in self.buffer_names}

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
