"""The training loop: sample, score, advantages, update, sync, log, checkpoint.

    cocoedit train [--config cluster/configs/tiny_cpu.yaml] [--resume] [key=value ...]
    python -m cocoedit.cluster.train --config cluster/configs/flux_kontext_8gpu.yaml     # under `ray job submit`

Rollouts for the next epoch may be sampled while the current one is scored and trained on: up to
`rollout.max_staleness` batches are in flight (0 = strictly on-policy); each batch carries the policy
version it was drawn from, and the lag is logged.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from cocoedit.actors.data import EpochSampler, grouped_items, load_items
from cocoedit.actors.types import EditItem, GroupedItem, RolloutBatch
from cocoedit.cluster.config import Config, dump_config
from cocoedit.cluster.groups import LearnerGroup, RolloutGroup
from cocoedit.cluster.launch import init_ray, resolve_models
from cocoedit.cluster.placement import Placement, PlacementError
from cocoedit.cluster.runlog import RunLog
from cocoedit.cluster.services import RewardServices
from cocoedit.learner.advantages import score_groups
from cocoedit.learner.checkpoint import latest_checkpoint
from cocoedit.rewards.client import make_edit
from cocoedit.rewards.weighting import combine
from cocoedit.telemetry import record_epoch

log = logging.getLogger("cocoedit.train")


@dataclass
class Pending:
    """A rollout batch in flight, with the sampler state from before it was drawn (for checkpoints)."""

    refs: Any
    sampler_state: dict
    epoch: int


class LearnerFailure(RuntimeError):
    """The learner died or raised: the run stops; the message names the checkpoint to resume from."""


Hook = Callable[[int, dict[str, Any]], None]


def train(
    cfg: Config, resume: bool = False, progress: bool = True, on_epoch_end: Optional[Hook] = None
) -> list[dict[str, float]]:
    """Run cfg.run.epochs epochs (or the remaining ones with resume); returns each epoch's metrics.

    `on_epoch_end(epoch, handles)` is called after each epoch with handles = {"rollout", "learner",
    "services"}, while the next batch is being sampled (fault and scaling tests use it).
    """
    ckpt = _checkpoint_to_resume(cfg) if resume else None  # before anything starts
    init_ray(cfg.run)
    placement = Placement(cfg)  # first: fails within run.placement_timeout_s, naming the role
    closing: list[Any] = [placement]
    try:
        cfg = resolve_models(cfg)
        items = {item.item_id: item for item in load_items(cfg.data)}
        sampler = EpochSampler(list(items), cfg.data.n_items, cfg.data.group_size, cfg.data.seed)
        runlog = RunLog(cfg.run.run_dir, dump_config(cfg))
        closing.insert(0, runlog)
        learner = LearnerGroup(cfg.policy, cfg.learner, placement)
        closing.insert(0, learner)
        rollout = RolloutGroup(cfg.policy, cfg.rollout, placement)
        closing.insert(0, rollout)
        services = RewardServices(cfg.rewards)
        closing.insert(0, services)
        handles = {"rollout": rollout, "learner": learner, "services": services}
        return _loop(cfg, ckpt, items, sampler, runlog, handles, progress, on_epoch_end)
    finally:
        for part in closing:
            _close(part)


def _loop(
    cfg: Config,
    ckpt: Optional[Path],
    items: dict[str, EditItem],
    sampler: EpochSampler,
    runlog: RunLog,
    handles: dict[str, Any],
    progress: bool,
    on_epoch_end: Optional[Hook],
) -> list[dict[str, float]]:
    rollout: RolloutGroup = handles["rollout"]
    learner: LearnerGroup = handles["learner"]
    services: RewardServices = handles["services"]
    version, start = 0, 0
    if ckpt is not None:
        version, start = _resume(ckpt, learner, sampler)
    guard = LearnerGuard(cfg, ckpt)
    with guard.during("loading the sampling weights", start):
        rollout.load(learner.sampling_weights(), version)

    queue: collections.deque[Pending] = collections.deque()
    next_draw = start
    sampled = 0  # edits drawn for training by this invocation; the learner counts what it trained on

    def refill(limit: int) -> None:
        nonlocal next_draw
        while len(queue) < limit and next_draw < cfg.run.epochs:
            state = copy.deepcopy(sampler.state_dict())
            batch_items = grouped_items(sampler.next_epoch(), items)
            queue.append(Pending(rollout.sample_async(batch_items, version), state, next_draw))
            next_draw += 1

    fixed = fixed_eval_items(list(items.values()), cfg.run.eval_items, cfg.run.eval_seeds)
    history: list[dict[str, float]] = []
    bar = tqdm(
        range(start, cfg.run.epochs), disable=not progress, desc="train", initial=start, total=cfg.run.epochs
    )
    refill(1)
    for epoch in bar:
        t0 = time.perf_counter()
        pending = queue.popleft()
        batch = rollout.gather(pending.refs)  # sample
        sampled += len(batch)
        t_sample = time.perf_counter()
        refill(cfg.rollout.max_staleness)  # next batches sample while this one is scored and trained on
        outcomes = services.score(to_edits(batch))  # score
        rewards, parts = combine(outcomes, cfg.rewards.weights)
        t_score = time.perf_counter()
        groups = score_groups(
            torch.as_tensor(rewards, dtype=torch.float32), batch.group_ids, batch.item_ids, cfg.learner
        )
        sampler.ban([i for i in groups.banned_items if i not in sampler.banned])  # advantages
        with guard.during("updating", epoch):
            metrics = learner.update(batch, groups.advantages, groups.valid)  # update
            weights = learner.sampling_weights()
            trained = learner.trained_edits()
        t_update = time.perf_counter()
        version += 1
        rollout.load(weights, version)  # sync
        refill(1)
        t_sync = time.perf_counter()
        replicas = services.autoscale()

        row = {
            **metrics,
            **groups.metrics(),
            "reward/mean": float(np.mean(rewards)),
            **{f"reward/{k}": float(np.mean(v)) for k, v in parts.items()},
            **_component_means(outcomes),
            **{f"services/{k}_replicas": float(n) for k, n in replicas.items()},
            "policy/version": float(version),
            "policy/lag": float(version - 1 - batch.policy_version),
            "time/sample_s": t_sample - t0,
            "time/score_s": t_score - t_sample,
            "time/update_s": t_update - t_score,
            "time/sync_s": t_sync - t_update,
            "time/epoch_s": t_sync - t0,
            "samples/edits": float(len(batch)),
            "samples/sampled_total": float(sampled),
            "samples/trained_total": float(trained),
            "samples/resampled_shards": float(rollout.resampled_shards),
            "services/replica_restarts": float(services.restarts_seen),
        }
        last = epoch == cfg.run.epochs - 1
        if cfg.run.eval_every and (epoch % cfg.run.eval_every == 0 or last):
            row.update(evaluate_fixed(rollout, services, fixed, version, cfg))  # evaluate
        history.append(row)
        runlog.scalars(epoch, row)
        record_epoch(
            epoch, row, len(queue), {name: len(services.addresses(name)) for name in services.clients}
        )
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", psnr=f"{row.get('pixel/psnr', float('nan')):.1f}")
        if cfg.run.image_every and (epoch % cfg.run.image_every == 0 or epoch == cfg.run.epochs - 1):
            _log_group(runlog, epoch, batch, rewards)
        if (cfg.run.checkpoint_every and (epoch + 1) % cfg.run.checkpoint_every == 0) or last:
            next_state = queue[0].sampler_state if queue else sampler.state_dict()
            with guard.during("saving a checkpoint", epoch):
                saved = learner.save(
                    cfg.run.run_dir,
                    {"epoch": epoch, "policy_version": version, "sampler": next_state},
                    cfg.run.keep_checkpoints,
                )
            guard.saved(Path(saved))
        if on_epoch_end is not None:
            on_epoch_end(epoch, handles)
    return history


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
                f"the learner failed while {what} at epoch {epoch}: {type(e).__name__}: {_first_line(e)}. "
                f"The run stops; {how}"
            ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else repr(e)


def _close(part: Any) -> None:
    try:
        part.close()
    except Exception as e:  # noqa: BLE001 - tearing down after a failure must not hide it
        log.warning("closing %s: %s", type(part).__name__, e)


def fixed_eval_items(items: list[EditItem], n_items: int, n_seeds: int) -> list[GroupedItem]:
    """The first n_items items, each with n_seeds fixed noise seeds (outside the training seed range)."""
    return [
        GroupedItem(item, f"eval:{item.item_id}", f"eval:{item.item_id}:{k}", 2**30 + j * n_seeds + k)
        for j, item in enumerate(items[:n_items])
        for k in range(n_seeds)
    ]


def evaluate_fixed(
    rollout: RolloutGroup, services: RewardServices, fixed: list[GroupedItem], version: int, cfg: Config
) -> dict[str, float]:
    """Edit the fixed set with the current sampling policy and score it: `eval/*` metrics."""
    batch = rollout.sample(fixed, version)
    outcomes = services.score(to_edits(batch))
    rewards, parts = combine(outcomes, cfg.rewards.weights)
    return {
        "eval/reward": float(np.mean(rewards)),
        **{f"eval/{k}": float(np.mean(v)) for k, v in parts.items() if "/" not in k},
        **{f"eval/{k}": v for k, v in _component_means(outcomes).items() if k.endswith(("psnr", "ssim"))},
    }


def to_edits(batch: RolloutBatch) -> list[Any]:
    """The batch as reward-proto Edits (PNG-encoded images, the mask, the target when known)."""
    masks = (batch.edit_masks[:, 0] * 255).round().to(torch.uint8)
    return [
        make_edit(
            edit_id=batch.edit_ids[i],
            group_id=batch.group_ids[i],
            policy_version=batch.policy_version,
            instruction=batch.instructions[i],
            source_image=batch.source_images[i].permute(1, 2, 0).numpy(),
            edited_image=batch.edited_images[i].permute(1, 2, 0).numpy(),
            edit_mask=masks[i].numpy(),
            target_image=None
            if batch.target_images is None
            else batch.target_images[i].permute(1, 2, 0).numpy(),
        )
        for i in range(len(batch))
    ]


def _component_means(outcomes: dict[str, list[Any]]) -> dict[str, float]:
    sums: dict[str, list[float]] = collections.defaultdict(list)
    for service, outs in outcomes.items():
        for o in outs:
            for k, v in o.components.items():
                sums[f"{service}/{k}"].append(v)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def _log_group(runlog: RunLog, epoch: int, batch: RolloutBatch, rewards: np.ndarray) -> None:
    first = [i for i, g in enumerate(batch.group_ids) if g == batch.group_ids[0]]
    runlog.image_grid(
        epoch,
        batch.source_images[first[0]],
        batch.edited_images[first],
        batch.edit_masks[first[0]],
        [float(rewards[i]) for i in first],
        title=f"epoch {epoch}: {batch.instructions[first[0]]}",
    )


def _checkpoint_to_resume(cfg: Config) -> Path:
    ckpt = latest_checkpoint(cfg.run.run_dir)
    if ckpt is None:
        raise FileNotFoundError(
            f"--resume: no complete checkpoint under {cfg.run.run_dir}/checkpoints; start without --resume"
        )
    return ckpt


def _resume(ckpt: Path, learner: LearnerGroup, sampler: EpochSampler) -> tuple[int, int]:
    """Restore learner and sampler from `ckpt`; returns (policy version, first epoch to run)."""
    extra = learner.load(str(ckpt))
    sampler.load_state_dict(extra["sampler"])
    log.info(
        "resumed from %s (epoch %d done, policy version %d)", ckpt, extra["epoch"], extra["policy_version"]
    )
    return int(extra["policy_version"]), int(extra["epoch"]) + 1


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit train [--config FILE] [--resume] [key=value ...]` (the CLI loads the config)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        history = train(cfg, resume=args.resume)
    except (PlacementError, LearnerFailure, FileNotFoundError) as e:
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
    parser = argparse.ArgumentParser(prog="python -m cocoedit.cluster.train", description=__doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("overrides", nargs="*")
    from cocoedit.cluster.cli import main as cli_main

    args = parser.parse_args(argv)
    config = ["--config", args.config] if args.config else []
    return cli_main(["train", *config, *(["--resume"] if args.resume else []), *args.overrides])


if __name__ == "__main__":
    sys.exit(main())
