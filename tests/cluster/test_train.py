"""Smoke run of the whole loop: real Ray actors (rollout worker, learner), real gRPC reward services."""

import json
from pathlib import Path

import pytest
import torch

from cocoedit.cluster.config import load_config
from cocoedit.cluster.train import run_epochs, start_run, train
from cocoedit.learner.checkpoint import latest_checkpoint

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
    cfg = load_config(None, [*TINY, f"run.run_dir={root / 'run'}"])
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
        # the fixed evaluation set (2 items x 2 seeds here) is scored at epoch 0 and at the last epoch
        assert 0.0 <= row["eval/reward"] <= 1.0 and "eval/synthetic" in row


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
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    state = torch.load(ckpt / "learner_state.pt", weights_only=False)
    # an epoch whose groups are all invalid (reward std <= 0.02) takes no optimizer step
    assert state["step"] == sum(1 for row in history if not row.get("learner/skipped"))
    assert state["extra_state"]["policy_version"] == 2
    assert state["extra_state"]["sampler"]["epoch"] == 2


def test_resume_continues_exactly(tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Interrupt the driver after epoch 1, `--resume`: the final LoRA equals an uninterrupted run's."""
    from safetensors.torch import load_file

    monkeypatch.setenv("COCOEDIT_CACHE", str(tmp_path / "cache"))
    base = [*TINY, "run.image_every=0", "run.checkpoint_every=1"]
    full = load_config(None, [*base, "run.epochs=3", f"run.run_dir={tmp_path / 'full'}"])
    train(full, progress=False)
    cut = load_config(None, [*base, "run.epochs=3", f"run.run_dir={tmp_path / 'cut'}"])

    with start_run(cut) as run:
        for epoch, _ in run_epochs(run):
            if epoch == 1:  # the driver stops after epoch 1 (its checkpoint is written), epoch 2 in flight
                assert run.rollouts.depth == 1
                break
    resumed = train(cut, resume=True, progress=False)
    assert len(resumed) == 1  # only epoch 2 was left
    for adapter in ("default", "old"):
        a = load_file(str(latest_checkpoint(tmp_path / "full") / f"lora_{adapter}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "cut") / f"lora_{adapter}.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), adapter
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(load_config(None, [*base, f"run.run_dir={tmp_path / 'empty'}"]), resume=True, progress=False)
