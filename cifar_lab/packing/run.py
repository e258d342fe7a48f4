"""``python -m cifar_lab.packing.run --pack ID --sweep-dir DIR RUN_DIR...``: train one pack in this process.

Each member is admitted as a solo run is (``lifecycle.admit``: lock, summary, checks, resume; a member
refused there is left out, its directory as it was); one fit trains the admitted members, and each
gets its own outcome in its summary.json (docs/packed.md, "Isolation").
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cifar_lab import lifecycle
from cifar_lab.errors import COMPLETED, EXIT_CRASH, EXIT_IO, EXIT_OK, Outcome, UserError, outcome_of, print_outcome
from cifar_lab.errors import print_user_error as print_error
from cifar_lab.preemption import preemption_signals
from cifar_lab.rundir import RunDir
from cifar_lab.summary import RunSummary

if TYPE_CHECKING:
    from cifar_lab.packing.record import MemberRun

log = logging.getLogger("cifar_lab")

WORK = ".packs"  # under the sweep directory: each pack trainer's root folder (nothing is written there)


@dataclass(frozen=True)
class MemberSpec:
    """A member's job directory as the launcher wrote it: its config, overrides and Hydra settings."""

    run_dir: Path
    cfg: DictConfig
    overrides: list[str]
    job_num: int
    job_logging: dict[str, Any]

    @classmethod
    def load(cls, run_dir: Path) -> MemberSpec:
        hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        return cls(
            run_dir=run_dir,
            cfg=OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
            overrides=list(hydra.hydra.overrides.task),
            job_num=int(hydra.hydra.job.num),
            job_logging=OmegaConf.to_container(hydra.hydra.job_logging, resolve=True),
        )


def configure_logging(specs: Sequence[MemberSpec]) -> None:
    """The first member's job logging, plus every other member's log file: each holds the pack's log."""
    config = specs[0].job_logging
    for k, spec in enumerate(specs[1:], start=1):
        for name, handler in spec.job_logging.get("handlers", {}).items():
            if "filename" in handler:
                config["handlers"][f"{name}_{k}"] = handler
                config.setdefault("root", {}).setdefault("handlers", []).append(f"{name}_{k}")
    if config:
        logging.config.dictConfig(config)


def admit_member(spec: MemberSpec, index: int) -> MemberRun | None:
    """The member's MemberRun if ``lifecycle.admit`` lets it train; None, its directory untouched, if not."""
    from cifar_lab import resilience
    from cifar_lab.packing.record import MemberRun
    from cifar_lab.recording import EpochWriter

    owner = RunDir(spec.run_dir)
    fields = lifecycle.summary_fields(spec.cfg, spec.run_dir, spec.overrides)
    summary = RunSummary(spec.run_dir, fields, write_now=False)
    try:
        ckpt_path, _ = lifecycle.admit(spec.cfg, spec.run_dir, owner, summary, spec.overrides)  # a pack has none
    except (UserError, OSError) as err:  # OSError: the disk refused its lock or files (full, read-only)
        owner.release()
        print_error(f"job #{spec.job_num} ({spec.run_dir}) does not train: {outcome_of(err).message}")
        return None
    synthetic, label = spec.cfg.data.source == "synthetic", f"[#{spec.job_num} {spec.cfg.name}] "
    writer = EpochWriter(spec.run_dir, summary, lifecycle.flat_hparams(spec.cfg), synthetic, label=label)
    writer.logger = lifecycle.make_logger(spec.cfg, spec.run_dir)  # the tensorboard one: grouping.PACKED_LOGGER
    return MemberRun(
        index=index,
        run_dir=spec.run_dir,
        cfg=spec.cfg,
        owner=owner,
        summary=summary,
        writer=writer,
        checkpoints=resilience.checkpoints(spec.run_dir),
        resume_from=ckpt_path,
    )


def finish(members: Sequence[MemberRun], outcome: Outcome, trainer: Any) -> int:
    """Every member still training gets the pack's outcome (``stopped`` after a fit that returned early, as a
    solo run). The exit code is the outcome's, or 4 where a summary.json was refused (the launcher then
    records what it can)."""
    from cifar_lab.resilience import why_stopped

    code = outcome.exit_code
    for m in members:
        mine = outcome
        if outcome is COMPLETED:  # a fit that returned may have ended early (a stop before it has no trainer)
            early = why_stopped(trainer, m.cfg.trainer.max_epochs, m.summary.data.get("epochs") or 0)
            mine = outcome_of(early) if early is not None else outcome
        if m.summary.finish(mine.status, error=mine.message or None):
            if m.summary.unwritten is not None:
                lost = outcome_of(m.summary.unwritten).message
                print_error(f"{m.run_dir}: its outcome ({mine.status}) could not be recorded: {lost}")
                code = EXIT_IO if code == EXIT_OK else code
            m.writer.close()
            if outcome is COMPLETED and m.summary.unwritten is None:
                lifecycle.print_final(m.summary.data)
                if mine is not outcome:
                    log.warning("%s: %s", m.run_dir, mine.message)
    return code


def train(pack_id: int, members: Sequence[MemberRun], work: Path, sweep_dir: Path) -> int:
    """One fit for every admitted member; the process's exit code."""
    from cifar_lab.models import count_params
    from cifar_lab.packing.build import build_pack
    from cifar_lab.packing.checkpoint import MemberCheckpointIO
    from cifar_lab.packing.record import MemberRecords
    from cifar_lab.recording import versions
    from cifar_lab.resilience import RngState

    first = members[0].cfg
    for m in members:
        m.summary.update(versions=versions(), packed={"pack": pack_id, "members": len(members)})
    records = MemberRecords(members)
    trainer, paths = None, [m.resume_from for m in members]
    try:
        if first.data.source == "synthetic":
            log.warning(
                "SYNTHETIC DATA: this pack trains on generated images, not CIFAR-10. Its numbers are for testing only."
            )
        if any(paths) and not all(paths):
            raise UserError(
                "some members of this pack have a checkpoints/last.ckpt to resume from and others have none; run "
                "the sweep again with resume=auto, which packs them apart."
            )
        # each member logs itself; the checkpoint I/O writes (and, to resume, reads) the members' solo checkpoints
        io = MemberCheckpointIO(paths if all(paths) else [], records.state_key)
        extras = lifecycle.trainer_args(first, work, [records, RngState()], False, io)
        parts = build_pack([m.cfg for m in members], **extras)
        trainer = parts.trainer
        for m, module in zip(members, parts.members):
            resumed = {"resumed_from": m.resume_from} if m.resume_from else {}
            m.summary.update(params=count_params(module.net), speed=parts.plan.describe(), **resumed)
        log.info("pack %d: %d members trained as one model", pack_id, len(members))
        trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=io.resume[0] if io.resume else None)
    except BaseException as err:
        resume = f"the same multirun command plus resume=auto hydra.sweep.dir={sweep_dir}"
        stop = lifecycle.what_stopped(err, records.exception, resume)
        outcome = outcome_of(stop)
        if outcome.expected:
            print_outcome(outcome, f"pack {pack_id}: ")
        else:
            log.exception("pack %d crashed; each of its members is marked failed", pack_id)
        return finish(members, outcome, trainer) or EXIT_CRASH
    return finish(members, COMPLETED, trainer)


def run_pack(pack_id: int, specs: Sequence[MemberSpec], sweep_dir: Path) -> int:
    """Admit each member as a solo run, train those admitted together, release them."""
    with preemption_signals():
        members: list[MemberRun] = []
        try:
            for spec in specs:
                member = admit_member(spec, len(members))
                if member is not None:
                    members.append(member)
            if not members:
                return 0
            return train(pack_id, members, sweep_dir / WORK / f"pack{pack_id}", sweep_dir)
        finally:
            for m in members:
                m.owner.release()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, required=True, help="the pack's id (its first job's number)")
    parser.add_argument("--sweep-dir", type=Path, required=True, help="the sweep directory")
    parser.add_argument("run_dirs", type=Path, nargs="+", help="the members' job directories, in order")
    args = parser.parse_args(argv)
    try:
        specs = [MemberSpec.load(d) for d in args.run_dirs]
        configure_logging(specs)
    except (OSError, ValueError) as err:  # a member's files unreadable, or its log file unwritable
        outcome = outcome_of(err)
        if outcome.exit_code != EXIT_IO:
            raise
        print_error(f"pack {args.pack} cannot start: {outcome.message}")
        return EXIT_IO
    return run_pack(args.pack, specs, args.sweep_dir)


if __name__ == "__main__":
    sys.exit(main())
