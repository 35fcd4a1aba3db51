"""What makes a checkpoint safe to load: a manifest of its files with their sha256 hashes, checked
before anything is read, and a DeepSpeed checkpoint engine that loads its `.pt` files with
`torch.load(weights_only=True)` (tensors, plain containers and three DeepSpeed record types), so that
a pickle placed in the run directory is refused instead of run.

    write_manifest(ckpt_dir)          # last thing a save does before COMPLETE
    verify_manifest(ckpt_dir)         # first thing a load does; CheckpointError naming the file
    engine.checkpoint_engine = TensorOnlyCheckpointEngine()   # before engine.load_checkpoint

The manifest catches a file that was changed, added or removed since the save (a damaged copy, a file
dropped in); the restricted loader is what stops code from running even when someone who can write
the run directory rewrites the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

MANIFEST = "MANIFEST.json"
# written after the manifest (it marks the directory complete) and read only as JSON
_UNLISTED = ("COMPLETE", MANIFEST)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely (damaged, foreign, or an old pickle)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[str]:
    return sorted(
        p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name not in _UNLISTED
    )


def write_manifest(ckpt: Path) -> None:
    """List every file under `ckpt` (relative path -> sha256, bytes) in ckpt/MANIFEST.json."""
    files = {
        name: {"sha256": _sha256(ckpt / name), "bytes": (ckpt / name).stat().st_size} for name in _files(ckpt)
    }
    (ckpt / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=1))


def verify_manifest(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file under `ckpt` that is missing from, absent for, or
    differs from its MANIFEST.json."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt}: no {MANIFEST} (the sha256 of every file, written by this version's saves); its files "
            "cannot be checked, so they are not loaded. Resume from a checkpoint written by this version or "
            "start the run again"
        )
    try:
        listed = json.loads(path.read_text())["files"]
        expected = {str(k): str(v["sha256"]) for k, v in listed.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is not a manifest written by cocoedit ({e!r}); the checkpoint is damaged"
        ) from e
    present = _files(ckpt)
    for name in present:
        if name not in expected:
            raise CheckpointError(
                f"{ckpt / name} is not listed in {path}: a file was added after the save; refused, nothing was "
                "loaded. Remove it, or resume from another checkpoint"
            )
    for name, digest in expected.items():
        if name not in present:
            raise CheckpointError(
                f"{ckpt / name} is listed in {path} but missing; the checkpoint is incomplete"
            )
        if _sha256(ckpt / name) != digest:
            raise CheckpointError(
                f"{ckpt / name} differs from its sha256 in {path}: changed after the save; refused, nothing was "
                "loaded. Resume from another checkpoint"
            )


def _deepspeed_records() -> list[Any]:
    """The plain record types DeepSpeed's ZeRO optimizer state holds besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_tensors_only(path: str | Path, map_location: Any = None) -> Any:
    """torch.load restricted to tensors, containers and DeepSpeed's records: anything else (a class
    whose unpickling would run code) raises CheckpointError naming `path`, and nothing of it runs."""
    try:
        with torch.serialization.safe_globals(_deepspeed_records()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        said = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0][:300]
        raise CheckpointError(
            f"{path} holds more than tensors and DeepSpeed's own state ({said}); refused without running it. "
            "Someone wrote this file who could also have written code into it: resume from a checkpoint you "
            "trust"
        ) from e


def tensor_only_engine() -> Any:
    """A DeepSpeed checkpoint engine whose `load` is load_tensors_only (saving is DeepSpeed's own)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class TensorOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return load_tensors_only(path, map_location)

    return TensorOnlyCheckpointEngine()
