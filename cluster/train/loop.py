"""The training loop: sample, score, advantages, update, sync, evaluate, log, checkpoint.

    cocoedit train [--config cluster/configs/tiny_cpu.yaml] [--resume [CHECKPOINT]] [key=value ...]
    python -m cocoedit.cluster.train.loop --config cluster/configs/flux_kontext_8gpu.yaml     # under `ray job submit`

    with start_run(cfg) as run:             # every part started; closed in reverse order on exit
        for epoch, row in run_epochs(run):  # the public seam: act on run.rollout / run.services between epochs
            ...

Rollouts for the next epoch may be sampled while the current one is scored and trained on: up to
`rollout.max_staleness` batches are in flight (0 = strictly on-policy); each batch carries the policy
version it was drawn from, and the lag is logged. The rollout workers score the groups they sample
(cluster/train/scored.py): the driver handles ids, rewards and references, never pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from cocoedit.actors.epochs import EpochSampler
from cocoedit.actors.types import GroupedItem, IndexItem, RolloutBatch
from cocoedit.cluster.config import Config, ConfigError
from cocoedit.cluster.export.card import card_inputs, tokenizer_limit, write_card
from cocoedit.cluster.plan import log_plan
from cocoedit.cluster.runtime.deadlines import Deadlines, Hung, NotStarted
from cocoedit.cluster.runtime.launch import RayConnectError, init_ray, resolve_models, shutdown_ray
from cocoedit.cluster.runtime.placement import Placement, PlacementError
from cocoedit.cluster.runtime.services import RewardServices
from cocoedit.cluster.train.evaluation import eval_sets, fixed_items, record, summary_lines, write_summary
from cocoedit.cluster.train.groups import RolloutFailure, RolloutGroup
from cocoedit.cluster.train.learners import LearnerGroup
from cocoedit.cluster.train.preflight import PreflightError, preflight
from cocoedit.cluster.train.report import write_run_report
from cocoedit.cluster.train.resume import Resume, ResumeConfigError, resume_from
from cocoedit.cluster.train.rollouts import RolloutQueue
from cocoedit.cluster.train.rundir import RunDirError, claim_run_dir, resumed_config
from cocoedit.cluster.train.runlog import RunLog, ValidationRow
from cocoedit.cluster.train.scored import ScoredBatch, batch_scores, recover, scoring_of
from cocoedit.cluster.train.scores import Scores
from cocoedit.cluster.train.stop import EXIT_CODE, Stopped, StopSignal, run_status
from cocoedit.learner.advantages import GroupScores, score_groups
from cocoedit.learner.checkpoint import latest_checkpoint, read_learner_state
from cocoedit.learner.schedule import run_fraction
from cocoedit.loopback import PortTakenError
from cocoedit.rewards.client import RewardServiceError
from cocoedit.rewards.weighting import RewardError
from cocoedit.telemetry import record_epoch
from cocoedit.timing import StageTimer

log = logging.getLogger("cocoedit.train")

GRID_ITEMS = 8  # items of the fixed validation set drawn in the logged image grids


class LearnerFailure(RuntimeError):
    """The learner died or raised: the run stops; the message names the checkpoint to resume from."""


@dataclass
class Run:
    """The parts of one training run, as `start_run` built them."""

    cfg: Config
    items: dict[str, IndexItem]  # item_id -> item (ItemRef, SynthRef: loaded by the rollout workers)
    sampler: EpochSampler
    runlog: RunLog
    learner: LearnerGroup
    rollout: RolloutGroup
    services: RewardServices
    rollouts: RolloutQueue  # batches drawn ahead (bounded staleness)
    guard: LearnerGuard
    # the fixed evaluation sets (cluster/train/evaluation.py): "eval" (held-out items) and "eval_train"
    evals: dict[str, list[GroupedItem]]
    # the fixed validation set whose edits are logged as images: the held-out set's first GRID_ITEMS
    # items, or without one (run.eval_every=0) as many training items, with the same fixed seeds
    validation: list[GroupedItem]
    start: int  # first epoch this process runs
    version: int  # policy version the rollout workers hold
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_s: Optional[float] = None  # how long the latest checkpoint took to write
    last_eval: Optional[tuple[list[str], Scores]] = None  # the held-out set's last (group ids, scores)
    last_eval_batch: Optional[tuple[ScoredBatch, Scores]] = None  # ... and its edits
    stop: StopSignal = field(default_factory=StopSignal)  # SIGTERM: a clean stop between epochs
    saved_epoch: Optional[int] = None  # the epoch of the latest checkpoint


def run_epochs(run: Run, progress: bool = False) -> Iterator[tuple[int, dict[str, float]]]:
    """Train the remaining epochs; yields (epoch, metrics row) after each, the next batch sampling."""
    cfg = run.cfg
    start = evaluate(run, run.start) if run.start == 0 else {}  # the starting policy, version 0
    run.rollouts.fill(1, run.version)
    for epoch in tqdm(
        range(run.start, cfg.run.epochs), disable=not progress, desc="train", initial=run.start
    ):
        run.stop.before_epoch(
            epoch, run.start, run.saved_epoch, lambda e: checkpoint(run, e), cfg.run.run_dir
        )
        timer = StageTimer()
        with timer("sample"):  # sampled and scored by the rollout workers
            batch = run.rollouts.next()
        with timer("refill"):  # the next batch is sampled while this one trains
            run.rollouts.fill(cfg.rollout.max_staleness, run.version)
        with timer("score"):
            scores = batch_scores(batch, cfg.rewards)
        with timer("advantages"):
            groups = advantages(run, batch, scores)
            ban_solved_items(run, groups)
        with timer("update"), run.guard.during("updating", epoch):
            t = run_fraction(epoch, cfg.run.epochs)  # where the run stands, for learner.lam_schedule
            update = run.learner.update(
                batch, groups.advantages, groups.valid, run.rollouts.rollout.resample, t
            )
        with timer("sync"):
            sync(run, epoch)
        with timer("autoscale"):  # reward services at their own scale
            replicas = run.services.autoscale()
        last = epoch == cfg.run.epochs - 1
        evaluation: dict[str, float] = {}
        if due(cfg.run.eval_every, epoch + 1, last):  # policy versions 0 (above), k, 2k, ... and the last
            with timer("evaluate"):
                evaluation = evaluate(run, epoch)
        row = {**metrics_row(run, batch, scores, groups, update, replicas, timer), **evaluation, **start}
        start = {}
        # before the checkpoint: a resume never skips a row
        log_epoch(run, epoch, row, last)
        if due(cfg.run.checkpoint_every, epoch + 1, last):
            checkpoint(run, epoch)  # timed: time/checkpoint_s in the next epoch's row
        run.history.append(row)
        yield epoch, row


def advantages(run: Run, batch: ScoredBatch, scores: Scores) -> GroupScores:
    """Group-normalised advantages, validity, and the items whose group is solved."""
    rewards = torch.as_tensor(scores.rewards.total, dtype=torch.float32)
    scored = torch.as_tensor(scores.rewards.scored)  # edits a service could not score count nowhere
    return score_groups(rewards, batch.group_ids, batch.item_ids, run.cfg.learner, scored)


def ban_solved_items(run: Run, groups: GroupScores) -> None:
    """Items whose group is solved (learner.ban_*) are not sampled again."""
    run.sampler.ban([i for i in groups.banned_items if i not in run.sampler.banned])


def sync(run: Run, epoch: int) -> None:
    """theta_old after the update goes to every rollout worker as the next policy version."""
    with run.guard.during("sending the sampling weights", epoch):
        weights = run.learner.sampling_weights()
    run.version += 1
    run.rollout.load(weights, run.version)
    run.rollouts.fill(1, run.version)


def sample_fixed(run: Run, items: list[GroupedItem]) -> tuple[ScoredBatch, Scores]:
    """Edit a fixed set with the current sampling policy and score it (its pixels stay in the workers)."""
    batch = run.rollout.sample(items, run.version, scoring_of(run.services))
    recover(run.services, run.rollout, batch)
    return batch, batch_scores(batch, run.cfg.rewards)


def evaluate(run: Run, epoch: int) -> dict[str, float]:
    """Every fixed evaluation set edited by the current policy and scored; per-item scores to
    run_dir/eval/<set>/v<version>.json. At version 0 (the starting policy) the metrics are named
    `<set>_start/...`. The held-out set's edits make the validation grid when this epoch logs one."""
    metrics: dict[str, float] = {}
    for name, items in run.evals.items():
        batch, scores = sample_fixed(run, items)
        values = record(run.cfg.run.run_dir, name, run.version, epoch, list(batch.group_ids), scores.rewards)
        if run.version == 0:
            values = {k.replace(f"{name}/", f"{name}_start/", 1): v for k, v in values.items()}
        metrics.update(values)
        if name == "eval":
            run.last_eval = (list(batch.group_ids), scores)  # the model card's final evaluation
            run.last_eval_batch = (batch, scores)
    return metrics


def log_epoch(run: Run, epoch: int, row: dict[str, float], last: bool) -> None:
    """metrics.jsonl + the trackers, the Ray dashboard's metrics, and every `run.image_every` epochs the
    fixed validation set's edits as an image (taken from this epoch's evaluation when it made them)."""
    run.runlog.scalars(epoch, row)
    replicas = {name: len(run.services.addresses(name)) for name in run.services.clients}
    record_epoch(epoch, row, run.rollouts.depth, replicas)
    if due(run.cfg.run.image_every, epoch, last) and run.validation:
        made = run.last_eval_batch if "eval/reward" in row else None  # this epoch's held-out edits
        batch, scores = made or sample_fixed(run, run.validation)
        held_out = "held-out" if run.evals else "training"
        shown = batch.pixels(grid_edits(batch.group_ids, GRID_ITEMS))  # only these edits' pixels are fetched
        rows = validation_rows(shown, [float(r) for r in scores.rewards.total[: len(shown)]])
        run.runlog.validation_grid(
            epoch,
            rows,
            title=f"epoch {epoch}, policy version {run.version}: fixed validation set ({held_out} items)",
        )


def validation_rows(batch: RolloutBatch, rewards: list[float]) -> list[ValidationRow]:
    """One row per item of a fixed set's batch (its seeds' edits in order), in the batch's item order."""
    rows: dict[str, list[int]] = {}
    for i, g in enumerate(batch.group_ids):
        rows.setdefault(g, []).append(i)
    targets, row = batch.target_images, batch.group_index
    return [
        ValidationRow(
            instruction=batch.instructions[idx[0]],
            source=batch.source_images[row[idx[0]]],
            edits=batch.edited_images[idx],
            edit_mask=batch.edit_masks_unit([idx[0]])[0],
            scores=[rewards[i] for i in idx],
            target=None if targets is None else targets[row[idx[0]]],
        )
        for idx in rows.values()
    ]


def grid_edits(group_ids: list[str], groups: int) -> int:
    """How many leading edits hold the first `groups` groups of a fixed set (its seeds are consecutive)."""
    firsts = list(dict.fromkeys(group_ids))[:groups]
    return max(i for i, g in enumerate(group_ids) if g in firsts) + 1


def checkpoint(run: Run, epoch: int) -> Path:
    """A complete checkpoint: learner state, and where the sampler and the policy version stand."""
    extra = {"epoch": epoch, "policy_version": run.version, "sampler": run.rollouts.sampler_state()}
    timer = StageTimer()
    with timer("checkpoint"), run.guard.during("saving a checkpoint", epoch):
        saved = run.learner.save(run.cfg.run.run_dir, extra, run.cfg.run.keep_checkpoints)
    run.guard.saved(Path(saved))
    run.checkpoint_s = timer.seconds["checkpoint"]
    run.saved_epoch = epoch
    return Path(saved)


def metrics_row(
    run: Run,
    batch: ScoredBatch,
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
        **timer.metrics(prefix="time/", total="epoch"),
        **({"time/checkpoint_s": run.checkpoint_s} if run.checkpoint_s is not None else {}),
        "samples/edits": float(len(batch)),
        "samples/sampled_total": float(run.rollouts.sampled),
        "samples/resampled_shards": float(run.rollout.resampled_shards),
        "services/replica_restarts": float(run.services.restarts_seen),
    }


def due(every: int, epoch: int, last: bool) -> bool:
    """Every `every` epochs (0 = never) and at the last one."""
    return bool(every) and (epoch % every == 0 or last)


@contextlib.contextmanager
def start_run(cfg: Config, resume: Resume = False) -> Iterator[Run]:
    """Start every part of a run (or join them to a checkpoint with `resume`: True for the latest, or a
    path); close them on exit."""
    ckpt = resume_from(cfg, resume)  # before anything starts: the checkpoint, its config checked
    # the data (and the fixed evaluation set, held out of training), checked before Ray starts
    items, held_out = preflight(cfg)
    init_ray(cfg.run)
    with contextlib.ExitStack() as parts:
        stop = StopSignal()  # after ray.init, which installs its own SIGTERM handler
        stop.install()
        parts.callback(stop.restore)
        placement = _closing(
            parts, Placement(cfg)
        )  # first: fails within run.placement_timeout_s, naming the role
        cfg = resolve_models(cfg)
        log_plan(cfg)  # devices and memory per role (cocoedit plan)
        sampler = EpochSampler(list(items), cfg.data.n_items, cfg.data.group_size, cfg.data.seed)
        runlog = RunLog(cfg, resume=ckpt is not None, first_epoch=resumed_epoch(ckpt))
        _closing(parts, runlog, with_status=True)  # the trackers' run ends FINISHED, KILLED or FAILED
        deadlines = Deadlines.of(cfg.run)
        learner = _closing(parts, LearnerGroup(cfg.policy, cfg.learner, placement, deadlines))
        rollout = _closing(parts, RolloutGroup(cfg.policy, cfg.rollout, placement, deadlines))
        services = _closing(parts, RewardServices(cfg.rewards, placement))
        rollout.wait_started()  # its workers loaded the editor while the services started
        version, start = _resume(ckpt, learner, sampler) if ckpt is not None else (0, 0)
        guard = LearnerGuard(cfg, ckpt)
        with guard.during("loading the sampling weights", start):
            rollout.load(learner.sampling_weights(), version)
        evals = eval_sets(cfg, items, held_out)
        if ckpt is not None:
            forget_evaluations(cfg.run.run_dir, version)  # those after the checkpoint are redone
        yield Run(
            cfg=cfg,
            items=items,
            sampler=sampler,
            runlog=runlog,
            learner=learner,
            rollout=rollout,
            services=services,
            rollouts=RolloutQueue(rollout, services, sampler, items, start, cfg.run.epochs),
            guard=guard,
            evals=evals,
            validation=evals["eval"][: GRID_ITEMS * cfg.run.eval_seeds]
            if evals
            else fixed_items(list(items.values())[:GRID_ITEMS], cfg.run.eval_seeds),
            start=start,
            version=version,
            stop=stop,
            saved_epoch=start - 1 if ckpt is not None else None,
        )


def train(cfg: Config, resume: Resume = False, progress: bool = True) -> list[dict[str, float]]:
    """Run cfg.run.epochs epochs (or the remaining ones with resume), then write the run report
    (cluster/train/report.py); returns each epoch's metrics."""
    with start_run(cfg, resume) as run:
        for _ in run_epochs(run, progress):
            pass
    write_run_report(Path(cfg.run.run_dir), cfg.run.name)  # report.png + report.html, every epoch so far
    write_summary(cfg.run.run_dir)  # eval/summary.json: each evaluation's change, first -> last
    if run.history:  # the model card beside the LoRA the run leaves in run_dir/lora
        last = run.history[-1].get("learner/step")
        write_card(
            run.cfg,
            Path(run.cfg.run.run_dir) / "lora",
            run.cfg.run.epochs,
            None if last is None else int(last),
            card_inputs(run.cfg, run.last_eval),
            tokenizer_limit(run.cfg.policy.model_path),
        )
    return run.history


def _closing(parts: contextlib.ExitStack, part: Any, with_status: bool = False) -> Any:
    """Close `part` when the run ends (`with_status`: telling it how, stop.run_status); a failure while
    closing is logged, never hides the run's own."""

    def close(kind: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            part.close(run_status(exc)) if with_status else part.close()
        except Exception as e:  # noqa: BLE001 - tearing down after a failure must not hide it
            log.warning("closing %s: %s", type(part).__name__, e)

    parts.push(close)
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
        except (RayActorError, RayTaskError, Hung) as e:
            latest = latest_checkpoint(self.cfg.run.run_dir) or self.latest
            if latest is None:
                how = "no checkpoint was written yet: start the run again with --overwrite (without --resume)"
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


def forget_evaluations(run_dir: str, version: int) -> None:
    """Delete the evaluations of policy versions after `version` (a resumed run redoes them)."""
    for path in Path(run_dir).glob("eval/*/v*.json"):
        if int(path.stem[1:]) > version:
            path.unlink()


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


# What ends a run with its one line and exit 1: each says what to change (cli_train; `cocoedit simulate`
# runs the same driver and ends the same way)
RUN_ERRORS: tuple[type[Exception], ...] = (
    PlacementError,
    NotStarted,
    LearnerFailure,
    FileNotFoundError,
    RayConnectError,
    ResumeConfigError,
    RewardError,
    RewardServiceError,
    RolloutFailure,
    PreflightError,
    PortTakenError,
    RunDirError,
    ConfigError,
)


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit train [--config FILE] [--resume [CHECKPOINT]] [key=value ...]` (the CLI loads the config)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.resume and not args.dry_run:
            cfg = resumed_config(cfg, args.config, args.overrides, args.resume)
        claim_run_dir(cfg, args.resume, getattr(args, "overwrite", False))
        history = train(cfg, resume=args.resume)
    except RUN_ERRORS as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Stopped as e:  # SIGTERM (cluster/train/stop.py): every part is closed
        print(f"Stopped: {e}", file=sys.stderr)
        return EXIT_CODE
    finally:
        shutdown_ray()  # the local cluster of this run, waited for: no process of it outlives the driver
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
    for line in summary_lines(cfg.run.run_dir, cfg.run.eval_seeds):
        print(line)
    for key in ("reward/mean", "pixel/psnr", "pixel/ssim", "synthetic/edit_psnr", "mllm/expected_score"):
        if any(key in r for r in history):
            print(
                f"{key:>22}: first {k} epochs {mean(first, key):.4f} -> last {k} epochs {mean(last, key):.4f}"
            )
