"""Scores of evaluation edits: masked pixel metrics, the synthetic instruction score, the MLLM judge.

    rows = pixel_scores(items, edited)                  # psnr/ssim keep + pie, synthetic with targets
    judged, info = run_judge(items, edited, edit_bytes, protocol, judge_cfg, eval_cfg, out / "judge.jsonl")

Judge answers are cached in a JSONL file keyed by (judge settings, item id, edit bytes): a rerun asks
the judge only about edits it has not seen with these settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch

from cocoedit.actors.types import EditItem
from cocoedit.cluster.eval.config import EvalConfig

PSNR_CAP_DB = 80.0  # 10 log10(1 / 1e-8): rewards.metrics floors the MSE at 1e-8


def pixel_scores(items: list[EditItem], edited: list[torch.Tensor]) -> list[dict[str, Optional[float]]]:
    """Masked PSNR/SSIM (keep-only and pie) and, with targets, the synthetic instruction score, per item."""
    from cocoedit.rewards.metrics import Convention, masked_psnr_ssim, uint8_to_unit
    from cocoedit.rewards.synthetic import instruction_scores

    out: list[dict[str, Optional[float]]] = []
    for start in range(0, len(items), 16):
        batch, edits = items[start : start + 16], edited[start : start + 16]
        src = uint8_to_unit(torch.stack([i.source_image for i in batch]))
        edi = uint8_to_unit(torch.stack(edits))
        mask = torch.stack([i.edit_mask for i in batch])
        rows: list[dict[str, Optional[float]]] = [{} for _ in batch]
        conventions: tuple[tuple[Convention, str], ...] = (("keep-only", "keep"), ("pie", "pie"))
        for convention, tag in conventions:
            psnr, ssim = masked_psnr_ssim(edi, src, mask, convention)
            for r, p, s in zip(rows, psnr.tolist(), ssim.tolist(), strict=True):
                r[f"psnr_{tag}"], r[f"ssim_{tag}"] = _finite(p), _finite(s)
        if all(i.target_image is not None for i in batch):
            tgt = uint8_to_unit(torch.stack([i.target_image for i in batch]))  # type: ignore[misc]
            s = instruction_scores(src, edi, tgt, mask)
            for r, score, ep in zip(rows, s["score"].tolist(), s["edit_psnr"].tolist(), strict=True):
                r["synthetic"], r["synthetic_edit_psnr"] = _finite(score), _finite(ep)
        out.extend(rows)
    return out


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def judge_protocol(bench: str, cfg: EvalConfig, judge_enabled: bool) -> Optional[str]:
    """The judge protocol of this run: eval.judge, or with auto the bench's own (manifest: GEdit's
    VIEScore when rewards.mllm.enabled, else none)."""
    if cfg.judge == "none":
        return None
    if cfg.judge != "auto":
        return cfg.judge
    from cocoedit.cluster.eval.benchmarks import benchmark

    own = benchmark(bench).protocol
    if own is not None:
        return own
    return "gedit" if judge_enabled else None


def run_judge(
    items: list[EditItem],
    edited: list[torch.Tensor],
    edit_bytes: list[bytes],
    protocol: str,
    judge_cfg: Any,
    cfg: EvalConfig,
    cache_path: Path,
) -> tuple[list[Any], dict[str, str]]:
    """JudgedEdit per item (answers cached in cache_path by edit bytes + judge settings), and settings."""
    from cocoedit.rewards.eval_judge import BenchJudge, JudgedEdit, JudgeInput

    judge = BenchJudge(judge_cfg, cfg.judge_max_tokens, cfg.judge_temperature, cfg.judge_attempts)
    fingerprint = hashlib.sha256(
        json.dumps(
            {"protocol": protocol, **dataclasses.asdict(judge_cfg), **judge.settings()}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    cached: dict[str, dict] = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                cached[row["cache_key"]] = row
    keys = [
        f"{fingerprint}:{i.item_id}:{hashlib.sha256(b).hexdigest()[:16]}"
        for i, b in zip(items, edit_bytes, strict=True)
    ]
    todo = [k for k, key in enumerate(keys) if key not in cached]

    async def go() -> dict[str, str]:
        await judge.load()
        try:
            with open(cache_path, "a") as f:
                for start in range(0, len(todo), cfg.judge_batch):
                    idx = todo[start : start + cfg.judge_batch]
                    inputs = [
                        JudgeInput(
                            items[k].item_id,
                            items[k].instruction,
                            items[k].task,
                            items[k].source_image.permute(1, 2, 0).numpy(),
                            edited[k].permute(1, 2, 0).numpy(),
                        )
                        for k in idx
                    ]
                    for k, res in zip(idx, await judge.judge(inputs, protocol), strict=True):
                        row = {"cache_key": keys[k], **dataclasses.asdict(res)}
                        cached[keys[k]] = row
                        f.write(json.dumps(row) + "\n")
                    f.flush()
        finally:
            await judge.close()
        return judge.settings()

    settings = asyncio.run(go()) if todo else judge.settings()
    results = []
    for key in keys:
        row = {k: v for k, v in cached[key].items() if k != "cache_key"}
        results.append(JudgedEdit(**row))
    return results, {"protocol": protocol, **settings}
