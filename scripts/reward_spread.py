"""How widely each reward spreads inside a group, for the starting policy: what reward weights rest on.

Advantages are normalised per group, so a reward that spreads 3x wider inside a group than another
owns the update at equal weight. This samples `--items` items x `--group` seeds with the config's
policy (the tiny editor in the tiny mode), scores them with every service of `rewards.weights` in
process, and prints per service the mean within-group std, the mean score, and the within-group
correlation between the services.

    .venv/bin/python scripts/reward_spread.py [--config FILE] [--items 16] [--group 8] [key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools

import numpy as np
import torch

from cocoedit.actors.data import load_index
from cocoedit.actors.rollout import RolloutWorker
from cocoedit.actors.types import GroupedItem, RolloutBatch
from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.launch import resolve_models
from cocoedit.rewards.base import DecodedEdit
from cocoedit.rewards.serve import service


def decoded(batch: RolloutBatch, i: int) -> DecodedEdit:
    def hwc(images: torch.Tensor, row: int) -> np.ndarray:
        return images[row].permute(1, 2, 0).numpy()

    g = int(batch.group_index[i])  # source, mask and target are stored once per group

    return DecodedEdit(
        edit_id=batch.edit_ids[i],
        group_id=batch.group_ids[i],
        policy_version=batch.policy_version,
        instruction=batch.instructions[i],
        source_image=hwc(batch.source_images, g),
        edited_image=hwc(batch.edited_images, i),
        edit_mask=batch.edit_masks_unit([i])[0, 0].numpy(),
        target_image=None if batch.target_images is None else hwc(batch.target_images, g),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_models(load_config(args.config, args.overrides))
    worker = RolloutWorker(cfg.policy, dataclasses.replace(cfg.rollout, batch_size=args.group))
    scorers = {}
    for name in cfg.rewards.weights:
        scorer = service(name).scorer(cfg.rewards.service(name))
        asyncio.run(scorer.load())
        scorers[name] = scorer

    scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    for j, item in enumerate(list(load_index(cfg.data).values())[: args.items]):
        group = [GroupedItem(item, f"g{j}", f"g{j}:{k}", 7919 * j + k) for k in range(args.group)]
        batch = worker.sample(group, worker.version)
        edits = [decoded(batch, i) for i in range(len(group))]
        for name, scorer in scorers.items():
            outcomes = asyncio.run(scorer.score(edits))
            scores[name].append(np.array([np.nan if o.score is None else o.score for o in outcomes]))

    print(f"{args.items} items x {args.group} seeds, policy {cfg.policy.model_path}")
    print(f"{'service':>10} {'weight':>7} {'mean':>7} {'std in group':>13} {'weight x std':>13}")
    for name, groups in scores.items():
        std = float(np.nanmean([np.nanstd(g) for g in groups]))
        mean = float(np.nanmean(np.concatenate(groups)))
        weight = cfg.rewards.weights[name]
        print(f"{name:>10} {weight:7.2f} {mean:7.3f} {std:13.4f} {weight * std:13.4f}")
    for a, b in itertools.combinations(scores, 2):
        corrs = [
            np.corrcoef(x, y)[0, 1]
            for x, y in zip(scores[a], scores[b], strict=True)
            if np.nanstd(x) > 0 and np.nanstd(y) > 0 and not (np.isnan(x).any() or np.isnan(y).any())
        ]
        print(f"within-group correlation {a} / {b}: {np.mean(corrs):+.2f} over {len(corrs)} groups")


if __name__ == "__main__":
    main()
