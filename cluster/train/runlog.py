"""The run directory and the experiment trackers: resolved config, metrics, image grids, the LoRA.

runs/<name>/
  config.yaml          resolved config of the run
  metrics.jsonl        one JSON object per epoch (every logged value)
  tb/                  TensorBoard event files (scalars and image grids)      run.trackers: tensorboard
  wandb/               Weights & Biases run (offline unless run.wandb_mode)   run.trackers: wandb
  mlruns/              MLflow file store (unless run.mlflow_tracking_uri)     run.trackers: mlflow
                       (metric names with '.' for '/': reward.mean)
  trackers.json        the W&B / MLflow run ids, so that `--resume` continues the same tracker runs, and
                       the last epoch the trackers were sent (`sent_through`)
  images/epoch_XXXXX.png   the fixed validation set: per item source | its edits (reward under each) |
                           target (when known) | mask overlay; the same items and seeds every time
  checkpoints/         written by learner.checkpoint

    runlog = RunLog(cfg, resume=False)       # writes config.yaml, opens the trackers
    runlog.scalars(epoch, row); runlog.validation_grid(epoch, rows, title); runlog.close()

Every tracker gets the same numeric values with the epoch as step, the resolved config as run
parameters, the image grids, and at `close` the LoRA in `run_dir/lora/` (when it was written) as an
artefact. Non-numeric values (e.g. the reason an update was skipped) go to metrics.jsonl only.

The fan-out is ours rather than accelerate's (`Accelerator(log_with=...)`, accelerate 1.15), which
does not keep that guarantee: its MLflow tracker logs our names as they are (the file store cannot hold
both `reward/synthetic` and `reward/synthetic/edit_psnr`), goes through MLflow's process-global active
run and tracking URI, and has no image logging; its TensorBoard tracker writes the config with
`add_hparams`, a second event directory (another run of every series in TensorBoard).

One epoch, one row, across kills and resumes: a resumed run (`first_epoch` = the epoch after its
checkpoint's) cuts metrics.jsonl back to the rows before `first_epoch` (a row half-written by a kill
goes too) and rewrites the epochs it redoes; the trackers, which cannot take a value back, are not
sent an epoch again that they were sent before the kill (they keep the first values; a resumed run
recomputes the same numbers but its timings).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from cocoedit.cluster.config import Config, dump_config, redacted_dict

log = logging.getLogger(__name__)

TRACKER_IDS = "trackers.json"


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict as dotted keys -> strings (`learner.lr` -> "0.0003"); lists as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, Mapping)) else str(value)
    return out


class TensorBoardTracker:
    def __init__(self, run_dir: Path, cfg: Config, run_id: Optional[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.id = None
        self._tb = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._tb.add_scalar(k, v, epoch)

    def image(self, epoch: int, image: np.ndarray, caption: str, key: str = "edits") -> None:
        self._tb.add_image(key, image, epoch, dataformats="HWC")

    def artifact(self, path: Path) -> None:
        pass  # TensorBoard has no artefacts: the LoRA stays in the run directory

    def close(self, status: str = "FINISHED") -> None:
        self._tb.close()  # TensorBoard keeps no run status


class WandbTracker:
    """A W&B run under run_dir/wandb; offline (no network) unless run.wandb_mode=online."""

    def __init__(self, run_dir: Path, cfg: Config, run_id: Optional[str]) -> None:
        if cfg.run.wandb_mode == "offline":
            # W&B's analytics and error reports reach its servers even for offline runs (measured with
            # wandb 0.31: a lookup of its API host from the telemetry thread) unless the process is offline
            os.environ["WANDB_MODE"] = "offline"
            os.environ["WANDB_ERROR_REPORTING"] = "false"
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.run.wandb_project,
            name=cfg.run.name,
            dir=str(run_dir),
            mode=cfg.run.wandb_mode,
            config=redacted_dict(cfg),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
            # no console capture, no system-metrics sampler: the run logs what the loop gives it
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.id = self.run.id

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log(values, step=epoch)

    def image(self, epoch: int, image: np.ndarray, caption: str, key: str = "edits") -> None:
        self.run.log({key: self._wandb.Image(image, caption=caption)}, step=epoch)

    def artifact(self, path: Path) -> None:
        art = self._wandb.Artifact(f"{self.run.name}-lora", type="model")
        art.add_dir(str(path))
        self.run.log_artifact(art)

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)  # W&B shows a nonzero one as failed


def mlflow_key(key: str) -> str:
    """Our metric name as MLflow's: '/' -> '.'. MLflow's file store keeps a metric per file along its
    slashes, so `reward/synthetic` (a file) and `reward/synthetic/edit_psnr` (a folder) cannot both exist."""
    return key.replace("/", ".")


class MlflowTracker:
    """An MLflow run in run_dir/mlruns (a local file store) unless run.mlflow_tracking_uri is given."""

    def __init__(self, run_dir: Path, cfg: Config, run_id: Optional[str]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = cfg.run.mlflow_tracking_uri
        if uri is None:
            uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow 3 refuses file stores unless opted in; a database or server is one URI away
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(cfg.run.mlflow_experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.run.mlflow_experiment)
            run_id = self.client.create_run(exp_id, run_name=cfg.run.name).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_params(redacted_dict(cfg)).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.id = run_id

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), v, now, epoch) for k, v in values.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def image(self, epoch: int, image: np.ndarray, caption: str, key: str = "edits") -> None:
        self.client.log_image(self.id, image, key=key, step=epoch)

    def artifact(self, path: Path) -> None:
        self.client.log_artifacts(self.id, str(path), artifact_path=path.name)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.id, status=status)


# run.trackers names -> implementation; each writes under the run directory unless configured otherwise
TRACKERS: dict[str, type] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


class RunLog:
    """The run directory (config.yaml, metrics.jsonl, images/) and the trackers of `run.trackers`.

    With resume=True the W&B and MLflow runs recorded in trackers.json are continued.
    """

    def __init__(self, cfg: Config, resume: bool = False, first_epoch: Optional[int] = None) -> None:
        """first_epoch (with resume): the first epoch this run logs; rows from it on are dropped."""
        self.dir = Path(cfg.run.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(dump_config(cfg))
        if resume and first_epoch is not None:
            keep_rows_before(self.dir / "metrics.jsonl", first_epoch)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        ids_path = self.dir / TRACKER_IDS
        ids = json.loads(ids_path.read_text()) if resume and ids_path.is_file() else {}
        self._ids_path = ids_path
        self._sent_before = int(ids.get("sent_through", -1))  # epochs the trackers hold from before
        self.trackers: dict[str, Any] = {}
        try:
            for name in cfg.run.trackers:
                self.trackers[name] = TRACKERS[name](self.dir, cfg, ids.get(name))
        except BaseException:
            self.close("FAILED")
            raise
        ids.update({name: t.id for name, t in self.trackers.items() if t.id is not None})
        self._ids = ids
        _write_atomic(ids_path, json.dumps(ids, indent=2) + "\n")

    def scalars(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Append `values` for `epoch` to metrics.jsonl (non-finite numbers as null) and send the finite
        numbers to every tracker; text values (e.g. a skip reason) go to metrics.jsonl only."""
        clean = {k: (v if isinstance(v, str) else _finite(v)) for k, v in values.items()}
        self._metrics.write(json.dumps({"epoch": epoch, **clean}) + "\n")
        self._metrics.flush()
        if epoch <= self._sent_before:
            return  # sent before a kill: a tracker cannot take it back, so it keeps that row
        numbers = {k: v for k, v in clean.items() if isinstance(v, float)}
        for tracker in self.trackers.values():
            tracker.scalars(epoch, numbers)
        if self.trackers and epoch > self._ids.get("sent_through", -1):
            self._ids["sent_through"] = epoch
            _write_atomic(self._ids_path, json.dumps(self._ids, indent=2) + "\n")

    def image_grid(
        self,
        epoch: int,
        source: torch.Tensor,
        edits: torch.Tensor,
        edit_mask: torch.Tensor,
        scores: Sequence[float],
        title: str = "",
    ) -> Path:
        """One row: source | each edit of the group (score under it) | mask overlay on the source.

        source: [3, H, W] uint8; edits: [G, 3, H, W] uint8; edit_mask: [1, H, W] in [0, 1].
        """
        from cocoedit.rewards.images import encode_png

        grid = np.asarray(make_grid_image(source, edits, edit_mask, scores, title))
        path = self.dir / "images" / f"epoch_{epoch:05d}.png"
        path.write_bytes(encode_png(grid))
        for tracker in self.trackers.values() if epoch > self._sent_before else ():
            tracker.image(epoch, grid, title)
        return path

    def validation_grid(self, epoch: int, rows: Sequence[ValidationRow], title: str = "") -> Path:
        """The fixed validation set as one image, one row per item (make_grid_image, with its target when
        known): images/epoch_XXXXX.png and `validation` in every tracker."""
        from cocoedit.rewards.images import encode_png

        grid = np.asarray(make_validation_image(rows, title))
        path = self.dir / "images" / f"epoch_{epoch:05d}.png"
        path.write_bytes(encode_png(grid))
        for tracker in self.trackers.values():
            tracker.image(epoch, grid, title, key="validation")
        return path

    def close(self, status: str = "FINISHED") -> None:
        """Hand the LoRA (run_dir/lora, when written) to the trackers as an artefact, then close them;
        `status`: how the run ended, FINISHED, KILLED (a clean stop on SIGTERM) or FAILED (MLflow's names)."""
        lora = self.dir / "lora"
        for name, tracker in self.trackers.items():
            try:
                if lora.is_dir():
                    tracker.artifact(lora)
            finally:
                try:
                    tracker.close(status)
                except Exception as e:  # noqa: BLE001 - one tracker failing to close must not hide the rest
                    log.warning("closing the %s tracker: %s", name, e)
        self.trackers = {}
        self._metrics.close()


def keep_rows_before(path: Path, first_epoch: int) -> int:
    """Cut metrics.jsonl at `path` back to its whole rows of epochs < first_epoch (replaced atomically).
    Returns how many rows were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            whole = isinstance(row, dict) and isinstance(row.get("epoch"), int)
        except ValueError:  # the row a kill left half-written
            whole = False
        if whole and row["epoch"] < first_epoch:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        _write_atomic(path, "".join(kept))
        log.info(
            "metrics.jsonl: dropped %d rows from epoch %d on (the run resumes there)", dropped, first_epoch
        )
    return dropped


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finite(value: Any) -> Optional[float]:
    v = float(value)
    return v if math.isfinite(v) else None


def mask_overlay(source: torch.Tensor, edit_mask: torch.Tensor) -> np.ndarray:
    """[3, H, W] uint8 + [1, H, W] mask -> [H, W, 3] uint8: the edit region tinted red, the rest dimmed."""
    img = source.permute(1, 2, 0).numpy().astype(np.float32)
    m = edit_mask[0].numpy()[..., None]
    red = np.array([255.0, 0.0, 0.0])
    out = m * (0.5 * img + 0.5 * red) + (1 - m) * 0.6 * img
    return out.clip(0, 255).astype(np.uint8)


@dataclass
class ValidationRow:
    """One item of the fixed validation set as the policy edited it."""

    instruction: str
    source: torch.Tensor  # [3, H, W] uint8
    edits: torch.Tensor  # [S, 3, H, W] uint8, one per fixed seed
    edit_mask: torch.Tensor  # [1, H, W] in [0, 1]
    scores: Sequence[float]  # [S] reward of each edit
    target: Optional[torch.Tensor] = None  # [3, H, W] uint8, when the item has a known target


def make_validation_image(rows: Sequence[ValidationRow], title: str = "") -> Image.Image:
    """The rows (make_grid_image each, the instruction above it) stacked under a title line."""
    if not rows:
        raise ValueError("the validation set is empty: run.eval_items must be >= 1")
    images = [
        make_grid_image(r.source, r.edits, r.edit_mask, r.scores, r.instruction, target=r.target)
        for r in rows
    ]
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, 14 + sum(im.height for im in images)), "white")
    ImageDraw.Draw(canvas).text((2, 0), title, fill="black")
    y = 14
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    return canvas


def make_grid_image(
    source: torch.Tensor,
    edits: torch.Tensor,
    edit_mask: torch.Tensor,
    scores: Sequence[float],
    title: str = "",
    cell: Optional[int] = None,
    target: Optional[torch.Tensor] = None,
) -> Image.Image:
    """Render source | edits | target (when given) | mask overlay as a PIL image, upscaled (nearest) to
    at least 96 px cells."""
    h, w = source.shape[-2:]
    scale = max(1, math.ceil((cell or 96) / max(h, w)))
    ch, cw = h * scale, w * scale
    text_h = 14
    overlay = torch.from_numpy(mask_overlay(source, edit_mask)).permute(2, 0, 1)
    extra = [] if target is None else [target]
    cells = [source, *edits, *extra, overlay]
    labels = ["source", *[f"{s:.3f}" for s in scores], *(["target"] if extra else []), "edit mask"]
    canvas = Image.new("RGB", (cw * len(cells), ch + 2 * text_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 0), title, fill="black")
    for i, (img, label) in enumerate(zip(cells, labels, strict=True)):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((cw, ch), Image.Resampling.NEAREST)
        canvas.paste(pil, (i * cw, text_h))
        draw.text((i * cw + 2, ch + text_h), label, fill="black")
    return canvas
