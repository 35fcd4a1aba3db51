"""The run's fixed evaluations (cluster/train/evaluation.py): per-item means over seeds, standard errors
over items, the paired change from the first to the last evaluation with its t-interval, and the
training items the run is certain to train on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cocoedit.actors.epochs import EpochSampler
from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.evaluation import changes, eval_sets, record, summary_lines, trained_items
from cocoedit.rewards.weighting import Rewards

T_0975_2 = 4.302653  # Student t, 97.5 % quantile, 2 degrees of freedom


def rewards(total: list[float], psnr: list[float], scored: list[bool]) -> Rewards:
    total_ = np.array(total)
    return Rewards(
        total=np.where(scored, total_, np.nan),
        scored=np.array(scored),
        parts={"pixel": total_ * 0.5, "pixel/psnr": np.array(psnr), "pixel/mse": np.array(psnr) * 0},
        errors={},
        fallbacks={},
    )


GROUPS = ["eval:a", "eval:a", "eval:b", "eval:b", "eval:c", "eval:c"]


def test_record_averages_seeds_per_item_and_gives_the_standard_error_over_items(tmp_path: Path) -> None:
    # items a (0.2, 0.4 -> 0.3), b (0.5, 0.5), c (0.7; its second seed unscored)
    r = rewards([0.2, 0.4, 0.5, 0.5, 0.7, 0.9], [20, 22, 24, 24, 30, 99], [True] * 5 + [False])
    m = record(tmp_path, "eval", 3, 2, GROUPS, r)
    means = np.array([0.3, 0.5, 0.7])
    assert m["eval/reward"] == pytest.approx(means.mean())
    assert m["eval/reward_se"] == pytest.approx(means.std(ddof=1) / math.sqrt(3))
    assert m["eval/reward_ci95"] == pytest.approx(T_0975_2 * m["eval/reward_se"], rel=1e-6)
    assert m["eval/pixel/psnr"] == pytest.approx(np.mean([21, 24, 30]))  # the unscored seed's 99 is out
    assert m["eval/dropped_edits"] == 1
    assert "eval/pixel/mse" not in m  # only psnr/ssim components are kept
    saved = json.loads((tmp_path / "eval" / "eval" / "v00003.json").read_text())
    assert saved["epoch"] == 2 and saved["items"]["a"]["reward"] == pytest.approx(0.3)


def test_changes_are_paired_per_item_with_a_t_interval(tmp_path: Path) -> None:
    before = rewards([0.2, 0.4, 0.5, 0.5, 0.7, 0.7], [20] * 6, [True] * 6)
    after = rewards([0.3, 0.5, 0.62, 0.62, 0.81, 0.81], [21] * 6, [True] * 6)
    record(tmp_path, "eval", 0, 0, GROUPS, before)
    record(tmp_path, "eval", 5, 4, GROUPS, rewards([0.0] * 6, [0.0] * 6, [True] * 6))  # in between
    record(tmp_path, "eval", 12, 11, GROUPS, after)
    (reward, _pixel, psnr) = changes(tmp_path, "eval")
    d = np.array([0.1, 0.12, 0.11])  # per-item changes of the means
    assert (reward.first_version, reward.last_version, reward.items) == (0, 12, 3)
    assert reward.diff == pytest.approx(d.mean())
    assert reward.half == pytest.approx(T_0975_2 * d.std(ddof=1) / math.sqrt(3), rel=1e-6)
    assert reward.significant
    assert psnr.diff == pytest.approx(1.0) and psnr.half == 0.0
    lines = summary_lines(tmp_path, seeds=2)
    assert lines[0].startswith("held-out items (never trained on), 3 items x 2 seeds: policy version 0 -> 12")
    assert "eval/reward: 0.5000 -> 0.6100   +0.1100 +- 0.0248" in lines[1]


def test_a_change_whose_interval_holds_zero_says_so(tmp_path: Path) -> None:
    record(tmp_path, "eval", 0, 0, GROUPS, rewards([0.2, 0.2, 0.5, 0.5, 0.7, 0.7], [20] * 6, [True] * 6))
    record(tmp_path, "eval", 1, 0, GROUPS, rewards([0.3, 0.3, 0.4, 0.4, 0.7, 0.7], [20] * 6, [True] * 6))
    (reward, *_) = changes(tmp_path, "eval")
    assert reward.diff == pytest.approx(0.0, abs=1e-12) and not reward.significant
    assert "(interval includes 0)" in summary_lines(tmp_path)[1]
    assert changes(tmp_path, "eval_train") == []  # no evaluation of that set


def test_the_training_set_is_what_the_sampler_draws_and_the_held_out_set_is_disjoint() -> None:
    cfg = load_config(
        None,
        ["data.synth_num=64", "data.n_items=4", "run.epochs=5", "run.eval_every=5", "run.eval_items=16"],
    )
    from cocoedit.actors.data import split_held_out

    items, held_out = split_held_out(cfg.data, cfg.run.eval_items)
    sampler = EpochSampler(list(items), 4, cfg.data.group_size, cfg.data.seed)
    drawn = [d.item_id for _ in range(5) for d in sampler.next_epoch()]
    train = trained_items(cfg, items, 16)
    assert [i.item_id for i in train] == list(dict.fromkeys(drawn))[:16]
    assert len(trained_items(cfg, items, 100)) == 20  # 5 epochs x 4 items: no more than the run draws
    sets = eval_sets(cfg, items, held_out)
    assert len(sets["eval"]) == len(sets["eval_train"]) == 16 * cfg.run.eval_seeds
    assert not {g.item.item_id for g in sets["eval"]} & set(items)
    assert {g.item.item_id for g in sets["eval_train"]} <= set(drawn)
    assert len({g.seed for g in sets["eval"]}) == 16 * cfg.run.eval_seeds
    off = load_config(None, ["run.eval_every=5", "run.eval_train=false"])
    assert list(eval_sets(off, items, held_out)) == ["eval"]


def test_a_resumed_run_forgets_the_evaluations_after_its_checkpoint(tmp_path: Path) -> None:
    """Evaluations of versions past the checkpoint a run resumes from are redone, so they are deleted
    (else the summary would pair the start with a version of the killed run)."""
    from cocoedit.cluster.train.loop import forget_evaluations

    r = rewards([0.2, 0.4, 0.5, 0.5, 0.7, 0.7], [20] * 6, [True] * 6)
    for name in ("eval", "eval_train"):
        for version in (0, 5, 10):
            record(tmp_path, name, version, version - 1, GROUPS, r)
    forget_evaluations(str(tmp_path), 5)
    for name in ("eval", "eval_train"):
        assert sorted(p.name for p in (tmp_path / "eval" / name).glob("*.json")) == [
            "v00000.json",
            "v00005.json",
        ]
    assert changes(tmp_path, "eval")[0].last_version == 5
