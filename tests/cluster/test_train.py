"""Smoke run of the whole loop: real Ray actors (rollout worker, learner), real gRPC reward services."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.loop import run_epochs, start_run, train
from cocoedit.cluster.train.resume import ResumeConfigError
from cocoedit.learner.checkpoint import complete_checkpoints, latest_checkpoint
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import ServiceConfig
from cocoedit.rewards.serve import SERVICES, Service
from tests.cluster.trackers import mlflow_series, wandb_history

TINY = [
    "run.epochs=2",
    "run.image_every=1",
    "run.checkpoint_every=1",
    "data.synth_num=8",
    "data.n_items=2",
    "data.group_size=4",
    "rollout.num_steps=4",
    "learner.train_timesteps=2",
    "pretrain.num_items=16",
    "pretrain.eval_items=4",
    "pretrain.vae_steps=3",
    "pretrain.steps=3",
    "pretrain.batch_size=4",
    "run.eval_every=5",
    "run.eval_items=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ray_local) -> tuple[Path, list[dict]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("train")
    mp = pytest.MonkeyPatch()
    mp.setenv("COCOEDIT_CACHE", str(root / "cache"))
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / "wandb_home" / var.lower()))
    cfg = load_config(None, [*TINY, f"run.run_dir={root / 'run'}", "run.trackers=[tensorboard,wandb,mlflow]"])
    history = train(cfg, progress=False)
    mp.undo()
    return root / "run", history


def test_two_epochs_train_on_every_sample(run: tuple[Path, list[dict]]) -> None:
    _, history = run
    assert len(history) == 2
    for epoch, row in enumerate(history):
        assert row["samples/edits"] == 2 * 4
        assert row["policy/version"] == epoch + 1
        assert row["policy/lag"] == 0  # strictly on-policy by default
        assert 0.0 <= row["reward/mean"] <= 1.0
        for key in ("reward/synthetic", "reward/pixel", "pixel/psnr", "time/sample_s", "time/update_s"):
            assert key in row, key
        # every effect of the epoch body is a timed stage; the epoch's time covers them all
        stages = ("sample", "refill", "score", "advantages", "update", "sync", "autoscale")
        stages += ("evaluate",) if epoch == 1 else ()  # evaluated after the last epoch (and before the first)
        assert all(row[f"time/{s}_s"] >= 0 for s in stages)
        assert row["time/epoch_s"] >= sum(row[f"time/{s}_s"] for s in stages)
    # the starting policy is evaluated before epoch 0 (held-out and training items), each mean with its SE
    assert 0.0 <= history[0]["eval_start/reward"] <= 1.0 and history[0]["eval_train_start/reward_se"] >= 0
    # and after the last epoch (eval_every=5 > 2 epochs)
    assert not any(k.startswith("eval/") for k in history[0])
    assert not any(k.startswith("eval_start/") for k in history[1])
    assert 0.0 <= history[1]["eval/reward"] <= 1.0 and "eval/synthetic" in history[1]
    assert 0.0 <= history[1]["eval_train/reward"] <= 1.0 and history[1]["eval/reward_se"] >= 0
    # checkpoint_every=1: the checkpoint written after epoch 0 is timed in epoch 1's row
    assert "time/checkpoint_s" not in history[0] and history[1]["time/checkpoint_s"] > 0


def test_run_directory_has_metrics_images_and_checkpoint(run: tuple[Path, list[dict]]) -> None:
    run_dir, history = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["reward/mean"] == pytest.approx(history[1]["reward/mean"])
    assert sorted(p.name for p in (run_dir / "images").glob("*.png")) == [
        "epoch_00000.png",
        "epoch_00001.png",
    ]
    assert list((run_dir / "tb").iterdir())
    # every evaluation's per-item scores, by policy version; the summary pairs the first and the last
    for name in ("eval", "eval_train"):
        versions = sorted(p.name for p in (run_dir / "eval" / name).glob("v*.json"))
        assert versions == ["v00000.json", "v00002.json"], name
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    (change,) = [c for c in summary["eval"] if c["metric"] == "reward"]
    assert (change["first_version"], change["last_version"], change["items"]) == (0, 2, 2)
    assert change["first"] == pytest.approx(history[0]["eval_start/reward"])
    assert change["last"] == pytest.approx(history[1]["eval/reward"])
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    state = json.loads((ckpt / "learner_state.json").read_text())
    # an epoch whose groups are all invalid (reward std <= 0.02) takes no optimizer step
    assert state["step"] == sum(1 for row in history if not row.get("learner/skipped"))
    assert state["extra_state"]["policy_version"] == 2
    assert state["extra_state"]["sampler"]["epoch"] == 2
    # the end of the run leaves the last checkpoint's theta where pipe.load_lora_weights(run_dir/"lora") reads it
    lora = (run_dir / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    assert lora == (ckpt / "lora" / "pytorch_lora_weights.safetensors").read_bytes()


def test_validation_images_show_the_same_items_and_every_series_once(run: tuple[Path, list[dict]]) -> None:
    """Every image epoch logs the fixed validation set (2 held-out items x 2 seeds: source | 2 edits |
    target | mask overlay per item, 32 px cells upscaled to 96) to every tracker; no metric is logged
    under two names; the run report is in the run directory."""
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, history = run
    grids = [np.asarray(Image.open(run_dir / "images" / f"epoch_{e:05d}.png")) for e in (0, 1)]
    title, row = 14, 96 + 2 * 14
    assert [g.shape for g in grids] == [(title + 2 * row, 5 * 96, 3)] * 2
    for k in range(2):  # the same sources and targets both times: a fixed set, not a training group
        y = title + k * row + 14
        for cell in (0, 3):
            assert (
                grids[0][y : y + 96, cell * 96 : (cell + 1) * 96]
                == grids[1][y : y + 96, cell * 96 : (cell + 1) * 96]
            ).all()
    tb = EventAccumulator(str(run_dir / "tb")).Reload()
    assert tb.Tags()["images"] == ["validation"] and [e.step for e in tb.Images("validation")] == [0, 1]
    scalars = set(tb.Tags()["scalars"])
    assert "pixel/psnr" in scalars and {t for t in scalars if f"reward/{t}" in scalars} == set()
    assert [h["_step"] for h in wandb_history(run_dir) if h.get("validation/_type") == "image-file"] == [0, 1]
    assert history[1]["eval/reward_ci95"] > 0 or math.isnan(history[1]["eval/reward_ci95"])
    assert (run_dir / "report.png").stat().st_size > 0 and "eval/reward" in (
        run_dir / "report.html"
    ).read_text()


def test_trackers_hold_the_reward_series_of_metrics_jsonl(run: tuple[Path, list[dict]]) -> None:
    """W&B (offline) and MLflow (file store) got the same reward per epoch as metrics.jsonl."""
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    series = [(r["epoch"], r["reward/mean"]) for r in rows]
    assert len(series) == 2
    assert [(h["_step"], h["reward/mean"]) for h in wandb_history(run_dir) if "reward/mean" in h] == series
    assert mlflow_series(run_dir, "reward/mean") == series
    assert mlflow_series(run_dir, "samples/sampled_total") == [
        (r["epoch"], r["samples/sampled_total"]) for r in rows
    ]


def test_counters_of_an_epoch_whose_groups_are_all_invalid(
    tmp_path: Path,
    ray_local,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """No group can pass valid_min_std=1 (rewards lie in [0, 1]): 8 edits sampled and handed to the
    learner, 0 valid, 0 trained, 1 skipped update, and the reason in the row and metrics.jsonl."""
    monkeypatch.setenv("COCOEDIT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        None,
        [
            *TINY,
            "run.epochs=1",
            "run.image_every=0",
            "run.checkpoint_every=0",
            "run.eval_every=0",
            "learner.valid_min_std=1.0",
            f"run.run_dir={tmp_path / 'run'}",
        ],
    )
    (row,) = train(cfg, progress=False)
    assert row["samples/sampled_total"] == row["samples/handed_total"] == 8
    assert row["samples/valid_total"] == 0 and row["samples/trained_total"] == 0
    assert row["learner/skipped"] == 1 and row["learner/skipped_updates_total"] == 1
    assert "no valid edit among 8" in row["learner/skip_reason"]
    assert "learner.valid_min_std=1" in row["learner/skip_reason"]
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert (
        logged["learner/skip_reason"] == row["learner/skip_reason"] and logged["samples/trained_total"] == 0
    )


def test_resume_continues_exactly(tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Interrupt the driver after epoch 1, `--resume`: the final LoRA equals an uninterrupted run's, with
    the regularizer's weights on a schedule (learner.lam_schedule, a function of the epoch)."""
    from safetensors.torch import load_file

    monkeypatch.setenv("COCOEDIT_CACHE", str(tmp_path / "cache"))
    # every update takes a step (valid_min_std=0), so each epoch's checkpoint is a new step to resume from
    base = [*TINY, "run.image_every=0", "run.checkpoint_every=1", "learner.valid_min_std=0"]
    base += ["learner.lam_schedule=linear", "learner.lam_schedule_start=0"]  # lam_pos 0.02 x 0, 0.5, 1
    full = load_config(None, [*base, "run.epochs=3", f"run.run_dir={tmp_path / 'full'}"])
    history = train(full, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reg/lam_pos"] for r in history] == [r["reg/lam_pos"] for r in logged]
    assert [r["reg/lam_pos"] for r in history] == pytest.approx([0.0, 0.01, 0.02])
    cut = load_config(None, [*base, "run.epochs=3", f"run.run_dir={tmp_path / 'cut'}"])

    with start_run(cut) as run:
        assert not {g.item.item_id for g in run.evals["eval"]} & set(
            run.items
        )  # evaluation items are held out
        for epoch, _ in run_epochs(run):
            if epoch == 1:  # the driver stops after epoch 1 (its checkpoint is written), epoch 2 in flight
                assert run.rollouts.depth == 1
                # the learner's shard fetch is timed as its own stage: timed as `update`, its ~0 s gave the
                # first real update run.deadline_min_s instead of run.deadline_first_s
                assert {"sample", "fetch", "update"} <= run.learner.deadlines.slowest.keys()
                # the sampling LoRA the workers loaded stays in learner rank 0's object store: the driver
                # passed a reference (it put the tensors in its own store before)
                loaded = run.rollout._weights_of[run.version]
                assert loaded is not None and loaded.owner_address() != ray.put(None).owner_address()
                assert all(isinstance(v, torch.Tensor) for v in ray.get(loaded).values())
                break
    resumed = train(cut, resume=True, progress=False)
    assert len(resumed) == 1 and resumed[0]["reg/lam_pos"] == pytest.approx(0.02)  # only epoch 2 was left
    for adapter in ("default", "old"):
        a = load_file(str(latest_checkpoint(tmp_path / "full") / f"lora_{adapter}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "cut") / f"lora_{adapter}.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), adapter
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(load_config(None, [*base, f"run.run_dir={tmp_path / 'empty'}"]), resume=True, progress=False)

    # `--resume PATH`: the full run's oldest checkpoint, continued into a new run directory, ends where
    # the full run ended
    older = complete_checkpoints(tmp_path / "full")[0]
    done = json.loads((older / "learner_state.json").read_text())["extra_state"]["epoch"]
    assert len(complete_checkpoints(tmp_path / "full")) == 3 and done == 0  # one step per epoch
    branch = load_config(None, [*base, "run.epochs=3", f"run.run_dir={tmp_path / 'branch'}"])
    assert len(train(branch, resume=older, progress=False)) == 2 - done
    for adapter in ("default", "old"):
        a = load_file(str(latest_checkpoint(tmp_path / "full") / f"lora_{adapter}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "branch") / f"lora_{adapter}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), adapter
    # a changed learning rate is refused before anything starts, naming the key
    argv = ["train", "--resume", str(older), *base, "run.epochs=3", "learner.lr=5e-4"]
    with pytest.raises(ResumeConfigError, match=r"learner.lr: 0.001 -> 0.0005"):
        train(load_config(None, argv[3:]), resume=older, progress=False)
    assert cli_main(argv) == 1


@dataclass(frozen=True)
class FlakyConfig(ServiceConfig):
    """rewards.flaky: a service that cannot score the first edit of every group."""


class FlakyScorer(Scorer):
    """0.5 for every edit but the first of each group (edit id `<group_id>:0`): a per-edit error."""

    service = "flaky"
    score_name = "flaky"

    def __init__(self, cfg: FlakyConfig) -> None:
        self.cfg = cfg

    def settings(self) -> dict[str, str]:
        return {}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        return [
            EditOutcome(e.edit_id, error="no answer for this edit")
            if e.edit_id.endswith(":0")
            else EditOutcome(e.edit_id, score=0.5)
            for e in edits
        ]


@pytest.mark.slow  # one more tiny run (~1 min alone, 6 min on a loaded 2-core machine)
def test_edits_a_service_cannot_score_are_dropped_and_counted(
    run: tuple[Path, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One of each group's 4 edits gets a per-edit error: the epoch trains on the other 3 (counted, the
    groups shrink) instead of failing. (Past rewards.max_dropped_fraction it fails: test_weighting.py.)"""
    monkeypatch.setenv("COCOEDIT_CACHE", str(run[0].parent / "cache"))  # the tiny editor `run` built
    monkeypatch.setitem(SERVICES, "flaky", Service(FlakyConfig, FlakyScorer))
    cfg = load_config(
        None,
        [
            *TINY,
            "run.epochs=1",
            "run.image_every=0",
            "run.eval_every=0",
            "rewards.weights={synthetic: 0.2, pixel: 0.6, flaky: 0.2}",
            "rewards.flaky.scaling.cpus_per_replica=0.1",
            "rewards.max_dropped_fraction=0.3",
            f"run.run_dir={tmp_path / 'run'}",
        ],
    )
    (row,) = train(cfg, progress=False)
    assert row["reward/dropped_edits"] == 2.0 and row["reward/dropped_fraction"] == 0.25  # 2 groups x 1
    assert row["adv/valid_fraction"] <= 6 / 8  # the dropped edits are never valid
    assert 0.0 <= row["reward/mean"] <= 1.0 and row["reward/flaky"] == 0.5
    assert row["samples/sampled_total"] == 8.0
