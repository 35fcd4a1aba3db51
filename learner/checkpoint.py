"""Learner checkpoints: both LoRA adapters, optimizer and lr-scheduler state (DeepSpeed's own files, so
ZeRO partitions are handled), step, RNG states and the caller's `extra_state`, written atomically.

A checkpoint of the training loop is named by the epochs done, the unit `run.checkpoint_every` counts:
`run_dir/checkpoints/epoch_00000020/` after 20 epochs (its `extra_state["epoch"]` is the last epoch's
index, 19). A checkpoint saved outside the loop (no "epoch" in its extra_state) is named by the
learner's optimizer step, `step_00000012/`; runs of earlier versions named every checkpoint so, and
both kinds are found and ordered by the epochs done.

Layout of one checkpoint, `run_dir/checkpoints/epoch_00000012/`:
    deepspeed/               engine.save_checkpoint(tag="deepspeed"): trainable LoRA, optimizer, scheduler
    lora_default.safetensors lora_old.safetensors   (policy.lora_state_dict, peft key names)
    lora/ lora.json          theta in the family's diffusers format, and what re-exports need (learner.export)
    learner_state.json       step, world size, ZeRO stage, extra_state (JSON-able)
    rng_rank{r}.safetensors  RNG states of every rank (torch/CUDA as tensors, numpy/python as JSON metadata)
    MANIFEST.json            sha256 and size of every file above (learner.integrity)
    COMPLETE                 written last; a directory without it is never picked

Our own state is JSON and safetensors, never a pickle: the run directory is shared storage, and
unpickling a file from it would run code of anyone who can write there. DeepSpeed's engine state
(`deepspeed/*.pt`) is read with torch.load(weights_only=True), and a load checks the manifest first.

Everything is written into `.tmp_epoch_...` and renamed when complete, so a killed save leaves no
directory that `latest_checkpoint` could pick. `keep_last` complete checkpoints are kept. After each
save `run_dir/lora/` holds that checkpoint's theta (replaced atomically).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from cocoedit.learner.integrity import CheckpointError, tensor_only_engine, verify_manifest, write_manifest

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
_CHECKPOINT_DIR = re.compile(r"^(step|epoch)_(\d+)$")


class Learner(Protocol):
    """What a checkpoint needs of a learner rank (learner.learner.Learner is one)."""

    rank: int
    world_size: int
    engine: Any  # the DeepSpeed engine: save_checkpoint / load_checkpoint
    policy: Any  # EditPolicy: lora_state_dict / load_lora_state_dict

    def state_dict(self) -> dict[str, Any]: ...  # {"step", "world_size", "zero_stage"}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def checkpoint_dir(run_dir: str | Path, step: int, extra_state: Optional[dict[str, Any]] = None) -> Path:
    """Where a checkpoint goes: by epochs done when extra_state names the epoch, else by learner step."""
    if extra_state is not None and "epoch" in extra_state:
        return Path(run_dir) / CHECKPOINTS / f"epoch_{int(extra_state['epoch']) + 1:08d}"
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def _epochs_done(kind: str, number: int, path: Path) -> int:
    """The epochs done at a checkpoint: its number for epoch_N; for step_N (runs of earlier versions,
    where the number is the learner step) the epoch its extra_state records, else the step."""
    if kind == "epoch":
        return number
    try:
        extra = json.loads((path / "learner_state.json").read_text()).get("extra_state", {})
        return int(extra["epoch"]) + 1 if "epoch" in extra else number
    except (OSError, ValueError):
        return number


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories under run_dir/checkpoints, oldest (fewest epochs done) first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CHECKPOINT_DIR.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((_epochs_done(m.group(1), int(m.group(2)), p), p.name.startswith("epoch"), p))
    return [p for *_, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None. Half-written ones are never returned."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def save_rng_state(path: Path) -> None:
    """This process's torch, CUDA, numpy and python RNG states to `path` (safetensors, no pickle)."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: the global MT19937 state as a tuple
    kind, keys, pos, has_gauss, cached_gaussian = state
    tensors["numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    # JSON writes floats exactly (repr), so the cached gaussians survive bit for bit
    metadata = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached_gaussian)]),
        "python": json.dumps([version, list(internal), gauss_next]),
    }
    save_file(tensors, str(path), metadata=metadata)


def read_rng_state(path: Path) -> dict[str, Any]:
    """The RNG states `save_rng_state` wrote to `path`, checked and parsed (nothing is set yet)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        kind, pos, has_gauss, cached_gaussian = json.loads(meta["numpy"])
        version, internal, gauss_next = json.loads(meta["python"])
        keys = tensors["numpy.keys"].numpy().astype(np.uint32)
        state = {"torch": tensors["torch"], "numpy": (kind, keys, pos, has_gauss, cached_gaussian)}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise CheckpointError(
            f"{path} is not an RNG state written by cocoedit (safetensors with numpy/python metadata): "
            f"{type(e).__name__}: {e}"
        ) from e
    state["python"] = (version, tuple(internal), gauss_next)
    state["cuda"] = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Set this process's RNGs to `state` (from `read_rng_state`)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_learner_state(ckpt: Path) -> dict[str, Any]:
    """learner_state.json of `ckpt`; an old pickled learner_state.pt is refused, never unpickled."""
    path = ckpt / "learner_state.json"
    if not path.is_file():
        pickled = sorted(p.name for p in ckpt.glob("*.pt"))
        why = (
            f"it holds pickled state ({', '.join(pickled)}), which this version never loads: unpickling "
            "runs code from anyone who can write the run directory. Start the run again or resume from a "
            "checkpoint written by this version"
            if pickled
            else "the checkpoint is incomplete"
        )
        raise CheckpointError(f"{ckpt}: no learner_state.json; {why}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e


def _barrier(learner: Learner) -> None:
    if learner.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def save_checkpoint(
    learner: Learner, run_dir: str | Path, extra_state: dict[str, Any], keep_last: int = 3
) -> Path:
    """Collective: every rank calls it; `extra_state` must be JSON-able. Returns the final checkpoint
    directory."""
    from safetensors.torch import save_file

    from cocoedit.learner.export import publish_lora, save_lora

    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} must be >= 1 (the checkpoint just written is kept)")
    own = learner.state_dict()
    final = checkpoint_dir(run_dir, own["step"], extra_state)
    tmp = final.with_name(".tmp_" + final.name)
    if learner.rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
        tmp.mkdir(parents=True)
    _barrier(learner)
    learner.engine.save_checkpoint(
        str(tmp), tag="deepspeed", client_state={}, save_latest=False, exclude_frozen_parameters=True
    )
    save_rng_state(tmp / f"rng_rank{learner.rank}.safetensors")
    if learner.rank == 0:
        for adapter in ("default", "old"):
            save_file(
                {k: v.contiguous() for k, v in learner.policy.lora_state_dict(adapter).items()},
                str(tmp / f"lora_{adapter}.safetensors"),
            )
        save_lora(learner.policy, tmp)
        (tmp / "learner_state.json").write_text(json.dumps({**own, "extra_state": extra_state}))
    _barrier(learner)
    if learner.rank == 0:
        write_manifest(tmp)
        with open(tmp / COMPLETE, "w") as f:
            json.dump({"step": own["step"]}, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        publish_lora(final, run_dir)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    _barrier(learner)
    return final


def load_checkpoint(learner: Learner, path: str | Path) -> dict[str, Any]:
    """Restore `path` (a checkpoint directory, or a run directory: its latest complete checkpoint).
    Collective. Returns extra_state."""
    from safetensors.torch import load_file

    path = Path(path)
    ckpt = path if (path / COMPLETE).is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no complete checkpoint at {path} (looked for {COMPLETE} in it and in {path / CHECKPOINTS}/epoch_* and step_*); "
            "start without --resume or point at a checkpoint directory"
        )
    # Every file checked against the manifest, then our own files parsed, before anything is restored.
    verify_manifest(ckpt)
    state = read_learner_state(ckpt)
    rank_rng = ckpt / f"rng_rank{learner.rank}.safetensors"
    if not rank_rng.is_file():  # a rank added since the save (ZeRO-0 allows it) starts from rank 0's
        rank_rng = ckpt / "rng_rank0.safetensors"
    rng = read_rng_state(rank_rng)
    if state["world_size"] != learner.world_size and state["zero_stage"] > 0:
        raise ValueError(
            f"{ckpt} was written by {state['world_size']} ranks with ZeRO stage {state['zero_stage']}; "
            f"this learner has {learner.world_size}: resume with learner.world_size={state['world_size']}"
        )
    own_engine = learner.engine.checkpoint_engine  # DeepSpeed's reads with weights_only=False: not for loads
    learner.engine.checkpoint_engine = tensor_only_engine()
    try:
        load_path, _ = learner.engine.load_checkpoint(
            str(ckpt),
            tag="deepspeed",
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
    finally:
        learner.engine.checkpoint_engine = own_engine
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no engine state in {ckpt / 'deepspeed'}")
    learner.policy.load_lora_state_dict(load_file(str(ckpt / "lora_old.safetensors")), "old")
    learner.load_state_dict(state)
    set_rng_state(rng)
    _barrier(learner)
    return state["extra_state"]
