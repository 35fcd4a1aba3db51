"""The training loop: sample, score, advantages, update, sync, evaluate, log, checkpoint.

    cocoedit train [--config cluster/configs/tiny_cpu.yaml] [--resume [CHECKPOINT]] [key=value ...]
    python -m cocoedit.cluster.train --config cluster/configs/flux_kontext_8gpu.yaml     # under `ray job submit`

    with start_run(cfg) as run:             # every part started; closed in reverse order on exit
        for epoch, row in run_epochs(run):  # the public seam: act on run.rollout / run.services between epochs
            ...

Rollouts for the next epoch may be sampled while the current one is scored and trained on: up to
`rollout.max_staleness` batches are in flight (0 = strictly on-policy); each batch carries the policy
version it was drawn from, and the lag is logged.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from cocoedit.actors.data import split_held_out
from cocoedit.actors.epochs import EpochSampler
from cocoedit.actors.types import EditItem, GroupedItem, ItemRef, RolloutBatch
from cocoedit.cluster.config import Config
from cocoedit.cluster.groups import LearnerGroup, RolloutGroup
from cocoedit.cluster.launch import RayConnectError, init_ray, resolve_models
from cocoedit.cluster.placement import Placement, PlacementError
from cocoedit.cluster.plan import log_plan
from cocoedit.cluster.preflight import check_train_inputs
from cocoedit.cluster.resume import Resume, ResumeConfigError, resume_from
from cocoedit.cluster.rollouts import RolloutQueue
from cocoedit.cluster.runlog import RunLog
from cocoedit.cluster.scores import Scores, score_batch
from cocoedit.cluster.services import RewardServices
from cocoedit.learner.advantages import GroupScores, score_groups
from cocoedit.learner.checkpoint import latest_checkpoint, read_learner_state
from cocoedit.rewards.weighting import RewardError
from cocoedit.telemetry import record_epoch

log = logging.getLogger("cocoedit.train")


class LearnerFailure(RuntimeError):
    """The learner died or raised: the run stops; the message names the checkpoint to resume from."""


@dataclass
class Run:
    """The parts of one training run, as `start_run` built them."""

    cfg: Config
    items: dict[str, EditItem | ItemRef]  # item_id -> item (ItemRef: read by the rollout workers)
    sampler: EpochSampler
    runlog: RunLog
    learner: LearnerGroup
    rollout: RolloutGroup
    services: RewardServices
    rollouts: RolloutQueue  # batches drawn ahead (bounded staleness)
    guard: LearnerGuard
    fixed: list[GroupedItem]  # the fixed evaluation set
    start: int  # first epoch this process runs
    version: int  # policy version the rollout workers hold
    history: list[dict[str, float]] = field(default_factory=list)


def run_epochs(run: Run, progress: bool = False) -> Iterator[tuple[int, dict[str, float]]]:
    """Train the remaining epochs; yields (epoch, metrics row) after each, the next batch sampling."""
    cfg = run.cfg
    run.rollouts.fill(1, run.version)
    for epoch in tqdm(
        range(run.start, cfg.run.epochs), disable=not progress, desc="train", initial=run.start
    ):
        timer = StageTimer()
        with timer("sample"):
            batch = run.rollouts.next()
        run.rollouts.fill(cfg.rollout.max_staleness, run.version)  # sampled while this one trains
        with timer("score"):
            scores = score_batch(run.services, batch, cfg.rewards)
        groups = advantages(run, batch, scores)
        with timer("update"), run.guard.during("updating", epoch):
            update = run.learner.update(batch, groups.advantages, groups.valid)
        with timer("sync"):
            sync(run, epoch)
        replicas = run.services.autoscale()  # reward services at their own scale
        row = metrics_row(run, batch, scores, groups, update, replicas, timer)
        last = epoch == cfg.run.epochs - 1
        if due(cfg.run.eval_every, epoch, last):
            row.update(evaluate_fixed(run))
        log_epoch(run, epoch, row, batch, scores, last)
        if due(cfg.run.checkpoint_every, epoch + 1, last):
            checkpoint(run, epoch)
        run.history.append(row)
        yield epoch, row


def advantages(run: Run, batch: RolloutBatch, scores: Scores) -> GroupScores:
    """Group-normalised advantages and validity; items whose group is solved are banned from sampling."""
    rewards = torch.as_tensor(scores.rewards.total, dtype=torch.float32)
    scored = torch.as_tensor(scores.rewards.scored)  # edits a service could not score count nowhere
    groups = score_groups(rewards, batch.group_ids, batch.item_ids, run.cfg.learner, scored)
    run.sampler.ban([i for i in groups.banned_items if i not in run.sampler.banned])
    return groups


def sync(run: Run, epoch: int) -> None:
    """theta_old after the update goes to every rollout worker as the next policy version."""
    with run.guard.during("sending the sampling weights", epoch):
        weights = run.learner.sampling_weights()
    run.version += 1
    run.rollout.load(weights, run.version)
    run.rollouts.fill(1, run.version)


def evaluate_fixed(run: Run) -> dict[str, float]:
    """Edit the fixed set with the current sampling policy and score it: `eval/*` metrics."""
    batch = run.rollout.sample(run.fixed, run.version)
    return score_batch(run.services, batch, run.cfg.rewards).eval_metrics()


def log_epoch(
    run: Run, epoch: int, row: dict[str, float], batch: RolloutBatch, scores: Scores, last: bool
) -> None:
    """metrics.jsonl + TensorBoard, the Ray dashboard's metrics, and a group's image grid now and then."""
    run.runlog.scalars(epoch, row)
    replicas = {name: len(run.services.addresses(name)) for name in run.services.clients}
    record_epoch(epoch, row, run.rollouts.depth, replicas)
    if due(run.cfg.run.image_every, epoch, last):
        first = [i for i, g in enumerate(batch.group_ids) if g == batch.group_ids[0]]
        run.runlog.image_grid(
            epoch,
            batch.source_images[first[0]],
            batch.edited_images[first],
            batch.edit_masks[first[0]],
            [float(scores.rewards.total[i]) for i in first],
            title=f"epoch {epoch}: {batch.instructions[first[0]]}",
        )


def checkpoint(run: Run, epoch: int) -> None:
    """A complete checkpoint: learner state, and where the sampler and the policy version stand."""
    extra = {"epoch": epoch, "policy_version": run.version, "sampler": run.rollouts.sampler_state()}
    with run.guard.during("saving a checkpoint", epoch):
        saved = run.learner.save(run.cfg.run.run_dir, extra, run.cfg.run.keep_checkpoints)
    run.guard.saved(Path(saved))


def metrics_row(
    run: Run,
    batch: RolloutBatch,
    scores: Scores,
    groups: GroupScores,
    update: dict[str, float],
    replicas: dict[str, int],
    timer: StageTimer,
) -> dict[str, float]:
    """One epoch's logged scalars: learner, advantages, rewards, policy lag, stage times, counters."""
    return {
        **update,
        **groups.metrics(),
        **scores.metrics(),
        **{f"services/{name}_replicas": float(n) for name, n in replicas.items()},
        "policy/version": float(run.version),
        "policy/lag": float(run.version - 1 - batch.policy_version),
        **timer.metrics(),
        "samples/edits": float(len(batch)),
        "samples/sampled_total": float(run.rollouts.sampled),
        "samples/resampled_shards": float(run.rollout.resampled_shards),
        "services/replica_restarts": float(run.services.restarts_seen),
    }


def due(every: int, epoch: int, last: bool) -> bool:
    """Every `every` epochs (0 = never) and at the last one."""
    return bool(every) and (epoch % every == 0 or last)


class StageTimer:
    """Seconds of each named stage of one epoch (`with timer("sample"): ...`), and of the epoch so far."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """`time/<stage>_s` for every stage, and `time/epoch_s` from the start to now."""
        return {
            **{f"time/{stage}_s": s for stage, s in self.seconds.items()},
            "time/epoch_s": time.perf_counter() - self.start,
        }


@contextlib.contextmanager
def start_run(cfg: Config, resume: Resume = False) -> Iterator[Run]:
    """Start every part of a run (or join them to a checkpoint with `resume`: True for the latest, or a
    path); close them on exit."""
    ckpt = resume_from(cfg, resume)  # before anything starts: the checkpoint, its config checked
    check_train_inputs(cfg)  # the data file the driver reads
    init_ray(cfg.run)
    with contextlib.ExitStack() as parts:
        placement = _closing(
            parts, Placement(cfg)
        )  # first: fails within run.placement_timeout_s, naming the role
        cfg = resolve_models(cfg)
        log_plan(cfg)  # devices and memory per role (cocoedit plan)
        # the fixed evaluation set is held out of training (items the policy never trains on)
        items, held_out = split_held_out(cfg.data, cfg.run.eval_items if cfg.run.eval_every else 0)
        sampler = EpochSampler(list(items), cfg.data.n_items, cfg.data.group_size, cfg.data.seed)
        runlog = _closing(parts, RunLog(cfg, resume=ckpt is not None, first_epoch=resumed_epoch(ckpt)))
        learner = _closing(parts, LearnerGroup(cfg.policy, cfg.learner, placement))
        rollout = _closing(parts, RolloutGroup(cfg.policy, cfg.rollout, placement))
        services = _closing(parts, RewardServices(cfg.rewards))
        version, start = _resume(ckpt, learner, sampler) if ckpt is not None else (0, 0)
        guard = LearnerGuard(cfg, ckpt)
        with guard.during("loading the sampling weights", start):
            rollout.load(learner.sampling_weights(), version)
        yield Run(
            cfg=cfg,
            items=items,
            sampler=sampler,
            runlog=runlog,
            learner=learner,
            rollout=rollout,
            services=services,
            rollouts=RolloutQueue(rollout, sampler, items, start, cfg.run.epochs),
            guard=guard,
            fixed=fixed_eval_items(held_out, cfg.run.eval_items, cfg.run.eval_seeds),
            start=start,
            version=version,
        )


def train(cfg: Config, resume: Resume = False, progress: bool = True) -> list[dict[str, float]]:
    """Run cfg.run.epochs epochs (or the remaining ones with resume); returns each epoch's metrics."""
    with start_run(cfg, resume) as run:
        for _ in run_epochs(run, progress):
            pass
        return run.history


def _closing(parts: contextlib.ExitStack, part: Any) -> Any:
    """Close `part` when the run ends; a failure while closing is logged, never hides the run's own."""

    def close() -> None:
        try:
            part.close()
        except Exception as e:  # noqa: BLE001 - tearing down after a failure must not hide it
            log.warning("closing %s: %s", type(part).__name__, e)

    parts.callback(close)
    return part


class LearnerGuard:
    """Turns a learner failure into LearnerFailure naming the checkpoint to resume from."""

    def __init__(self, cfg: Config, resumed_from: Optional[Path]) -> None:
        self.cfg = cfg
        self.latest = resumed_from

    def saved(self, path: Path) -> None:
        self.latest = path

    @contextlib.contextmanager
    def during(self, what: str, epoch: int) -> Iterator[None]:
        try:
            yield
        except (RayActorError, RayTaskError) as e:
            latest = latest_checkpoint(self.cfg.run.run_dir) or self.latest
            if latest is None:
                how = "no checkpoint was written yet: start the run again (without --resume)"
            else:
                how = (
                    f"resume from checkpoint {latest} with `cocoedit train --resume` and the same config and "
                    f"overrides (run.run_dir={self.cfg.run.run_dir})"
                )
            raise LearnerFailure(
                f"the learner failed while {what} at epoch {epoch}: {type(e).__name__}: {_last_line(e)}. "
                f"The run stops; {how}"
            ) from e


def _last_line(e: BaseException) -> str:
    """The last line of an exception's text (a Ray error ends with the remote exception's own message)."""
    text = str(e).strip().splitlines()
    return text[-1] if text else repr(e)


def fixed_eval_items(items: list[EditItem | ItemRef], n_items: int, n_seeds: int) -> list[GroupedItem]:
    """The first n_items items, each with n_seeds fixed noise seeds (outside the training seed range)."""
    return [
        GroupedItem(item, f"eval:{item.item_id}", f"eval:{item.item_id}:{k}", 2**30 + j * n_seeds + k)
        for j, item in enumerate(items[:n_items])
        for k in range(n_seeds)
    ]


def resumed_epoch(ckpt: Optional[Path]) -> Optional[int]:
    """The first epoch a run resumed from `ckpt` trains (None when not resuming)."""
    if ckpt is None:
        return None
    return int(read_learner_state(ckpt)["extra_state"]["epoch"]) + 1


def _resume(ckpt: Path, learner: LearnerGroup, sampler: EpochSampler) -> tuple[int, int]:
    """Restore learner and sampler from `ckpt`; returns (policy version, first epoch to run)."""
    extra = learner.load(str(ckpt))
    sampler.load_state_dict(extra["sampler"])
    log.info(
        "resumed from %s (epoch %d done, policy version %d)", ckpt, extra["epoch"], extra["policy_version"]
    )
    return int(extra["policy_version"]), int(extra["epoch"]) + 1


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit train [--config FILE] [--resume [CHECKPOINT]] [key=value ...]` (the CLI loads the config)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        history = train(cfg, resume=args.resume)
    except (
        PlacementError,
        LearnerFailure,
        FileNotFoundError,
        RayConnectError,
        ResumeConfigError,
        RewardError,
    ) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    _print_summary(cfg, history)
    return 0


def _print_summary(cfg: Config, history: list[dict[str, float]]) -> None:
    if not history:
        print("nothing to do: every epoch is done")
        return
    k = max(1, min(10, len(history) // 2))
    first, last = history[:k], history[-k:]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else float("nan")

    print(f"run directory: {Path(cfg.run.run_dir).resolve()}")
    first_epoch = cfg.run.epochs - len(history)  # history holds the epochs this invocation ran
    evals = [(first_epoch + i, r) for i, r in enumerate(history) if "eval/reward" in r]
    if len(evals) >= 2:
        (e0, r0), (e1, r1) = evals[0], evals[-1]
        for key in ("eval/reward", "eval/synthetic", "eval/mllm", "eval/pixel", "eval/pixel/psnr"):
            if key in r0:
                print(f"{key:>22}: fixed set at epoch {e0} {r0[key]:.4f} -> epoch {e1} {r1[key]:.4f}")
    for key in ("reward/mean", "pixel/psnr", "pixel/ssim", "synthetic/edit_psnr", "mllm/expected_score"):
        if any(key in r for r in history):
            print(
                f"{key:>22}: first {k} epochs {mean(first, key):.4f} -> last {k} epochs {mean(last, key):.4f}"
            )


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m cocoedit.cluster.train ARGS` is `cocoedit train ARGS`."""
    from cocoedit.cluster.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
