"""The per-item work of curation that runs on Ray Data: read a shard's rows, store the images, compute the
edit mask and the keep-region consistency (`prepare_shards`), and the MLLM stage (`AnnotateStage`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cocoedit.cluster.curate.config import CurateConfig
from cocoedit.cluster.curate.filters import passes_cheap
from cocoedit.cluster.curate.inputs import (
    ItemError,
    Shard,
    decode_image,
    image_bytes,
    read_shard,
)

if TYPE_CHECKING:
    from cocoedit.rewards.config import JudgeConfig


log = logging.getLogger("cocoedit.curate")


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _safe(item_id: str) -> str:
    from cocoedit.cluster.eval.evaluate import safe_key

    try:
        return safe_key(item_id)[:80]
    except ValueError:
        return "item"


def _store(out: Path, rel: str, data: bytes, array: np.ndarray, suffix: str) -> str:
    """Put an input image under OUT as it came (its encoded bytes), or as PNG when it had no file
    format of its own; returns the OUT-relative path written (`rel` + the suffix)."""
    rel += suffix or ".png"
    if suffix:
        (out / rel).write_bytes(data)
    else:
        _save_png(array, out / rel)
    return rel


def keep_metrics(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Keep-region (mask False) PSNR in dB and SSIM of target vs source, uint8 [H, W, 3] each
    (rewards/metrics.py's keep-only convention)."""
    import torch

    from cocoedit.rewards.metrics import masked_psnr_ssim, uint8_to_unit

    with torch.inference_mode():
        edited = uint8_to_unit(torch.from_numpy(target).permute(2, 0, 1)[None])
        src = uint8_to_unit(torch.from_numpy(source).permute(2, 0, 1)[None])
        psnr, ssim = masked_psnr_ssim(edited, src, torch.from_numpy(mask)[None, None].float(), "keep-only")
    return float(psnr[0]), float(ssim[0])


def _mask_pair(
    rec: dict[str, Any],
    source: np.ndarray,
    row: dict[str, Any],
    base: Path,
    stem: str,
    cfg: CurateConfig,
    out: Path,
) -> None:
    """Fill `rec` for an item with a target: target copied, mask written, area, keep PSNR/SSIM, hashes."""
    from PIL import Image

    from cocoedit.cluster.curate.dedup import perceptual_hash, pixel_digest
    from cocoedit.cluster.curate.masks import edit_mask, undo_global_change

    data = image_bytes(row.get("target"), base, "target")
    target, suffix = decode_image(data, "target", cfg.max_image_pixels)
    if target.shape != source.shape:
        # the manifest pairs pixels: a target of another size is resized onto the source (and saved as PNG)
        size = (source.shape[1], source.shape[0])
        target = np.asarray(Image.fromarray(target).resize(size, Image.Resampling.BICUBIC))
        suffix, rec["target_resized"] = "", True
    rec["target"] = _store(out, f"{stem}.target", data, target, suffix)
    result = edit_mask(source, target, cfg.mask)
    rec["mask"] = f"{stem}.mask.png"
    _save_png(result.mask.astype(np.uint8) * 255, out / rec["mask"])
    rec.update(
        mask_from="pair",
        area=result.area_fraction,
        threshold=result.threshold,
        shift=[round(result.shift[0], 3), round(result.shift[1], 3)],
        shift_applied=result.shift_applied,
        gain=[round(g, 4) for g in result.gain],
        digest=pixel_digest(source, target),
        hashes=[perceptual_hash(source), perceptual_hash(target)],
    )
    if result.mask.any() and not result.mask.all():
        # on the target as the mask saw it: a shifted or tinted copy still leaves the rest alone
        rec["psnr"], rec["ssim"] = keep_metrics(source, undo_global_change(target, result), result.mask)


def prepare_item(row: dict[str, Any], shard: Shard, k: int, cfg: CurateConfig, out: Path) -> dict[str, Any]:
    """Stage 1 of one item: copy its images into OUT/items, mask the pair, measure it. Returns its
    record (JSON-able); an unusable item gets `error` and no numbers."""
    from cocoedit.cluster.curate.dedup import perceptual_hash, pixel_digest

    row_id = row.get("id")
    item_id = (
        str(row_id) if row_id not in (None, "") else f"{Path(shard.path).stem}-{shard.first_row + k:07d}"
    )
    instruction = row.get("instruction")
    rec: dict[str, Any] = {
        "shard": shard.index,
        "file": shard.path,
        "row": shard.first_row + k,
        "id": item_id,
        "instruction": instruction if isinstance(instruction, str) else "",
        "task": str(row.get("task") or ""),
        "error": None,
        "source": None,
        "target": None,
        "mask": None,
        "mask_from": None,
        "area": None,
        "psnr": None,
        "ssim": None,
        "judged": False,
        "mllm_todo": False,
    }
    stem = f"items/{shard.index:05d}/{k:05d}-{_safe(item_id)}"
    try:
        if row.get("_error"):
            raise ItemError(f"input row: {row['_error']}")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ItemError("instruction: missing or empty")
        base = Path(shard.path).parent
        data = image_bytes(row.get("source"), base, "source")
        source, suffix = decode_image(data, "source", cfg.max_image_pixels)
        (out / stem).parent.mkdir(parents=True, exist_ok=True)
        rec["width"], rec["height"] = int(source.shape[1]), int(source.shape[0])
        rec["source"] = _store(out, f"{stem}.source", data, source, suffix)
        if row.get("target") is not None:
            _mask_pair(rec, source, row, base, stem, cfg, out)
        elif cfg.mllm and cfg.annotate.ground:
            rec["mask_from"] = "grounding"
            rec["digest"] = pixel_digest(source) + ":" + " ".join(rec["instruction"].lower().split())
            rec["hashes"] = [perceptual_hash(source)]
        else:
            raise ItemError("no target image, and grounding is off (curate.mllm / curate.annotate.ground)")
    except ItemError as e:
        rec["error"] = str(e)
    except OSError as e:  # writing into OUT failed, or a file vanished mid-read
        rec["error"] = f"i/o: {e}"
    rec["mllm_todo"] = bool(cfg.mllm and rec["error"] is None and passes_cheap(rec, cfg.filters))
    return rec


def prepare_shards(batch: dict[str, np.ndarray], cfg: CurateConfig, out: str, layout: str) -> dict[str, list]:
    """Ray Data stage 1 (a task per shard): shard specs in, one JSON record per item out."""
    records = []
    for spec in batch["shard"]:
        shard = Shard(**json.loads(spec))
        for k, row in enumerate(read_shard(shard, layout)):
            records.append(json.dumps(prepare_item(row, shard, k, cfg, Path(out))))
    return {"record": records}


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).copy()


class AnnotateStage:
    """Ray Data stage 2 (an actor holding one vLLM engine): refinement and judge scores for items with
    a target, grounding (a box mask) for items without, for the records marked `mllm_todo`."""

    def __init__(self, judge_cfg: JudgeConfig, cfg: CurateConfig, out: str) -> None:
        from cocoedit.rewards.annotate import Annotator

        self.cfg = cfg
        self.out = Path(out)
        self.annotator = Annotator(judge_cfg, cfg.annotate)
        self.annotator.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from cocoedit.cluster.curate.masks import box_mask
        from cocoedit.rewards.annotate import AnnotationRequest

        records = [json.loads(r) for r in batch["record"]]
        todo = [r for r in records if r["mllm_todo"]]
        requests = [
            AnnotationRequest(
                r["id"],
                r["instruction"],
                _read_rgb(self.out / r["source"]),
                _read_rgb(self.out / r["target"]) if r["target"] else None,
            )
            for r in todo
        ]
        for rec, req, ann in zip(todo, requests, self.annotator.annotate(requests), strict=True):
            if req.target_image is None:
                rec["ground_answer"], rec["ground_error"] = ann.ground_answer, ann.ground_error
                if ann.boxes is None:
                    rec["error"] = f"grounding failed: {ann.ground_error}"
                    continue
                mask = box_mask(
                    req.source_image.shape[:2],
                    [(b.x1, b.y1, b.x2, b.y2) for b in ann.boxes],
                    self.cfg.ground_margin,
                )
                rec["boxes"] = [[b.x1, b.y1, b.x2, b.y2, b.label] for b in ann.boxes]
                rec["mask"] = rec["source"].rsplit(".source", 1)[0] + ".mask.png"  # beside the source
                _save_png(mask.astype(np.uint8) * 255, self.out / rec["mask"])
                rec["area"] = float(mask.mean())
                continue
            rec["refine_answer"], rec["refine_error"] = ann.refine_answer, ann.refine_error
            if ann.refined is not None:
                rec["refined"] = dataclasses.asdict(ann.refined)
            if self.cfg.annotate.judge:
                rec["judged"] = True
                rec["judge_score"], rec["judge_error"] = ann.judge_score, ann.judge_error
                rec["judge_instruction"] = ann.judge_instruction
        return {"record": [json.dumps(r) for r in records]}

    def __del__(self) -> None:
        annotator = getattr(self, "annotator", None)
        if annotator is not None:
            annotator.close()
