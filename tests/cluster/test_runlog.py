"""The run directory and the experiment trackers: TensorBoard, W&B (offline) and MLflow (file store)
get the same scalars as metrics.jsonl, the image grids, the config as parameters and the LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.runlog import (
    RunLog,
    ValidationRow,
    flat_params,
    make_grid_image,
    make_validation_image,
    mask_overlay,
)
from tests.cluster.trackers import mlflow_series, wandb_history

ALL = "run.trackers=[tensorboard,wandb,mlflow]"


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # W&B's own caches and staging areas go to this test's folder, not the home directory
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))


# Runs a W&B-tracked RunLog in a fresh process that refuses every look-up of a non-loopback host and
# prints the hosts it was asked for when the process ends (W&B's analytics send at exit).
NO_NETWORK_CHILD = """
import atexit, socket, sys
asked = []
atexit.register(lambda: print("hosts asked for:", asked, flush=True))  # first registered: runs last
real = socket.getaddrinfo
def loopback_only(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        asked.append(str(host))
        raise socket.gaierror("test: no network")
    return real(host, *args, **kwargs)
socket.getaddrinfo = loopback_only
from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.runlog import RunLog
runlog = RunLog(load_config(None, ["run.trackers=[wandb]", "run.run_dir=" + sys.argv[1]]))
runlog.scalars(0, {"reward/mean": 0.5})
runlog.close()
"""


def test_every_tracker_gets_the_scalars_config_images_and_lora(
    tmp_path: Path, offline_wandb: list[str]
) -> None:
    cfg = load_config(None, [ALL, f"run.run_dir={tmp_path / 'run'}", "learner.lr=0.002"])
    runlog = RunLog(cfg)
    # reward/synthetic and reward/synthetic/edit_psnr: a file and a folder in MLflow's file store
    rows = [
        {"reward/mean": 0.25 + 0.125 * e, "reward/synthetic": 0.5, "reward/synthetic/edit_psnr": 20.0 + e}
        | {"pixel/psnr": float("inf")}
        for e in range(3)
    ]
    for epoch, row in enumerate(rows):
        runlog.scalars(epoch, {**row, "learner/skip_reason": "none"} if epoch == 1 else row)
    source = torch.zeros(3, 8, 8, dtype=torch.uint8)
    runlog.image_grid(2, source, source[None].repeat(2, 1, 1, 1), torch.ones(1, 8, 8), [0.5, 0.25], "t")
    row = ValidationRow(
        "make it red", source, source[None].repeat(2, 1, 1, 1), torch.ones(1, 8, 8), [0.5, 0.25]
    )
    runlog.validation_grid(2, [row, row], "fixed set")
    (runlog.dir / "lora").mkdir()
    (runlog.dir / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"lora bytes")
    runlog.close()
    run_dir = runlog.dir

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/mean"] for r in logged] == [0.25, 0.375, 0.5]
    assert logged[0]["pixel/psnr"] is None and logged[1]["learner/skip_reason"] == "none"
    series = [(r["epoch"], r["reward/mean"]) for r in logged]

    history = wandb_history(run_dir)
    assert [(h["_step"], h["reward/mean"]) for h in history if "reward/mean" in h] == series
    assert all("pixel/psnr" not in h and "learner/skip_reason" not in h for h in history)
    assert [h["_step"] for h in history if h.get("edits/_type") == "image-file"] == [2]
    assert [h["_step"] for h in history if h.get("validation/_type") == "image-file"] == [2]
    assert mlflow_series(run_dir, "reward/mean") == series
    assert mlflow_series(run_dir, "reward/synthetic/edit_psnr") == [(0, 20.0), (1, 21.0), (2, 22.0)]

    from mlflow import MlflowClient

    ids = json.loads((run_dir / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.data.params["learner.lr"] == "0.002" and run.data.params["run.trackers"] == json.dumps(
        ["tensorboard", "wandb", "mlflow"]
    )
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(ids["mlflow"], "lora")] == [
        "lora/pytorch_lora_weights.safetensors"
    ]
    images = [a.path for a in client.list_artifacts(ids["mlflow"], "images")]
    assert any("validation" in p for p in images) and any("edits" in p for p in images)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run_dir / "tb")).Reload()
    assert sorted(tb.Tags()["images"]) == ["edits", "validation"]
    assert [e.step for e in tb.Images("validation")] == [2]

    # a resumed run continues the same MLflow and W&B runs
    resumed = RunLog(cfg, resume=True)
    resumed.scalars(3, {"reward/mean": 0.625})
    resumed.close()
    # the same tracker runs, and the last epoch they were sent (a resume after a kill sends none twice)
    assert json.loads((run_dir / "trackers.json").read_text()) == {**ids, "sent_through": 3}
    assert mlflow_series(run_dir, "reward/mean") == [*series, (3, 0.625)]
    assert [h["reward/mean"] for h in wandb_history(run_dir) if "reward/mean" in h] == [
        0.25,
        0.375,
        0.5,
        0.625,
    ]


def test_trackers_reach_no_host_by_default(tmp_path: Path, offline_wandb: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_MODE", "MLFLOW_"))}
    proc = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_CHILD, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hosts asked for: []" in proc.stdout  # wandb 0.31 asks for its API host unless told offline
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_tensorboard_alone_by_default(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}"])
    assert cfg.run.trackers == ("tensorboard",)
    runlog = RunLog(cfg)
    runlog.scalars(0, {"reward/mean": 0.5})
    runlog.close()
    assert not (runlog.dir / "wandb").exists() and not (runlog.dir / "mlruns").exists()
    assert list((runlog.dir / "tb").iterdir())


def test_unknown_tracker_is_a_config_error() -> None:
    from cocoedit.cluster.config import ConfigError

    with pytest.raises(ConfigError, match=r"run.trackers\[1\] must be one of"):
        load_config(None, ["run.trackers=[tensorboard,comet]"])


def test_flat_params_and_one_overlay_formula() -> None:
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": {}, "e": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "{}",
        "e": "None",
    }
    source = torch.tensor([[[100]], [[50]], [[0]]], dtype=torch.uint8)  # one pixel, [3, 1, 1]
    # edit region: half source, half red; kept region: dimmed to 60 %
    assert mask_overlay(source, torch.ones(1, 1, 1)).tolist() == [[[177, 25, 0]]]
    assert mask_overlay(source, torch.zeros(1, 1, 1)).tolist() == [[[60, 30, 0]]]
    grid = np.asarray(make_grid_image(source, source[None], torch.ones(1, 1, 1), [0.5], cell=4))
    assert grid.shape == (4 + 28, 3 * 4, 3)
    assert grid[14, 8].tolist() == [177, 25, 0]  # the overlay cell of the training grid


def test_validation_image_rows_with_and_without_target() -> None:
    """One row per item: source | edits (reward under each) | target when known | mask overlay."""
    red, blue = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)
    red[0], blue[2] = 255, 255
    edits = torch.stack([blue, blue])
    with_target = ValidationRow("a", red, edits, torch.zeros(1, 8, 8), [0.5, 0.25], target=blue)
    without = ValidationRow("b", red, edits, torch.zeros(1, 8, 8), [0.5, 0.25])
    image = np.asarray(make_validation_image([with_target, without], "title"))
    cell, text = 96, 14  # 8 px upscaled to at least 96 px; a text line above and below each row
    assert image.shape == (text + 2 * (cell + 2 * text), 5 * cell, 3)
    row0, row1 = text + text, text + (cell + 2 * text) + text  # first pixel line of each row's cells
    assert image[row0, 3 * cell + 5].tolist() == [0, 0, 255]  # the target cell
    assert image[row0, 4 * cell + 5].tolist() == [153, 0, 0]  # mask overlay: kept region dimmed
    assert image[row1, 3 * cell + 5].tolist() == [153, 0, 0]  # no target: the overlay comes third
    assert image[row1, 4 * cell + 5].tolist() == [255, 255, 255]  # and the row is shorter
    with pytest.raises(ValueError, match="validation set is empty"):
        make_validation_image([])
