"""Evaluation edits on disk: OUT/edits/<id>.png, generated resumably, locally or sharded over Ray actors.

    counts = generate_edits(items, out_dir, policy_cfg, eval_cfg, lora, edits="policy", use_ray=False)

Each edit is written atomically, so a rerun after a crash generates only the missing ones;
OUT/edits/settings.json pins the generation settings and a rerun with other settings is refused.
`edits="target"|"source"` writes the known targets / the untouched sources (oracle bounds).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.types import EditItem
from cocoedit.cluster.eval.config import EvalConfig, generation_settings

EDIT_SOURCES = ("policy", "target", "source")
SETTINGS_FILE = "settings.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` either does not exist or holds all of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_png(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] from a PNG file of RGB (or grey) pixels."""
    import numpy as np

    from cocoedit.rewards.images import decode_png

    image = decode_png(Path(path).read_bytes())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image[:, :, :3].transpose(2, 0, 1)))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    from cocoedit.rewards.images import encode_png

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
        settings["lora_sha256"] = sha256_file(Path(lora)) if lora else None
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
            write_atomic(edits_dir / f"{item.item_id}.png", encode_png(image.permute(1, 2, 0).numpy()))
        return counts
    assert policy_cfg is not None
    # one size per chunk (benchmark sources are all cropped/resized to eval.image_size)
    chunks = _chunks(todo, cfg.batch_size)
    from tqdm import tqdm

    gen_settings = generation_settings(policy_cfg, cfg)
    bar = tqdm(total=len(todo), disable=not progress, desc="edits")
    if use_ray:
        for results in _generate_ray(chunks, policy_cfg, gen_settings, cfg, lora):
            for item_id, data in results:
                write_atomic(edits_dir / f"{item_id}.png", data)
            bar.update(len(results))
    else:
        from cocoedit.actors.generate import EditGenerator

        generator = EditGenerator(policy_cfg, gen_settings, lora)
        for chunk in chunks:
            for item_id, data in generator.generate(chunk):
                write_atomic(edits_dir / f"{item_id}.png", data)
            bar.update(len(chunk))
    bar.close()
    return counts


def _generate_ray(
    chunks: list[list[EditItem]],
    policy_cfg: PolicyConfig,
    settings: dict[str, Any],
    cfg: EvalConfig,
    lora: Optional[str],
) -> Iterator[list[tuple[str, bytes]]]:
    """Yield each chunk's results as soon as a worker finishes it (chunks go to whichever worker is free)."""
    import ray

    from cocoedit.actors.generate import EditGenerator
    from cocoedit.cluster.runtime.placement import Demand, check_cluster

    n_workers = min(cfg.num_workers, len(chunks))
    # an actor the cluster could never place would wait forever: fail now, naming the knobs
    check_cluster(
        [
            Demand(
                "eval workers",
                n_workers,
                cfg.cpus_per_worker,
                cfg.gpus_per_worker,
                "eval.num_workers / eval.cpus_per_worker / eval.gpus_per_worker (0 GPUs for CPU-only clusters)",
            )
        ],
        ray.cluster_resources(),
        [n["Resources"] for n in ray.nodes() if n.get("Alive")],
    )
    # Any: Ray's stubs type actor methods without .remote
    actor: Any = ray.remote(EditGenerator).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)
    workers = [actor.remote(policy_cfg, settings, lora) for _ in range(n_workers)]
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
