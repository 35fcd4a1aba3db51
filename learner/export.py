"""The trained LoRA in the diffusers format of the policy's family, what users load into the stock pipeline:

    pipe = FluxKontextPipeline.from_pretrained("/models/FLUX.1-Kontext-dev")  # or QwenImageEdit(Plus)Pipeline
    pipe.load_lora_weights("runs/my_run/lora")  # theta, rank/alpha scale included

Every checkpoint holds `lora/` (theta, the `default` adapter) and `lora.json` (the family and the
LoraConfig, so any adapter of it can be exported again without the model); each save refreshes
`run_dir/lora/` atomically, so the end of a run leaves the last checkpoint's theta there.

    cocoedit export --checkpoint RUN_DIR/checkpoints/epoch_00000060 --out DIR [--view default|old]  (cluster/export/hub.py)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from cocoedit.actors.policies.lora import LORA_WEIGHT_NAME, adapter_metadata, write_lora_dir

LORA_DIR = "lora"  # in a checkpoint and in the run directory
LORA_INFO = "lora.json"
VIEWS = ("default", "old")


def save_lora(policy: Any, ckpt_dir: str | Path) -> Path:
    """Write theta of `policy` as `ckpt_dir/lora/` (diffusers format) and `ckpt_dir/lora.json`."""
    ckpt = Path(ckpt_dir)
    info = {"family": policy.family, "adapter_metadata": adapter_metadata(policy.transformer, "default")}
    (ckpt / LORA_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    return write_lora_dir(
        policy.lora_state_dict("default"), info["adapter_metadata"], policy.pipeline_class(), ckpt / LORA_DIR
    )


def publish_lora(ckpt_dir: str | Path, run_dir: str | Path) -> Path:
    """Copy a checkpoint's `lora/` file to `run_dir/lora/`, replacing the previous one atomically."""
    out = Path(run_dir) / LORA_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{LORA_WEIGHT_NAME}.tmp-{os.getpid()}"
    shutil.copyfile(Path(ckpt_dir) / LORA_DIR / LORA_WEIGHT_NAME, tmp)
    os.replace(tmp, out / LORA_WEIGHT_NAME)
    return out / LORA_WEIGHT_NAME


def export_lora(
    ckpt_dir: str | Path, out_dir: str | Path, view: Literal["default", "old"] = "default"
) -> Path:
    """Write adapter `view` (theta or theta_old) of a checkpoint as `out_dir/pytorch_lora_weights.safetensors`
    in its family's diffusers format. Returns the file."""
    from safetensors.torch import load_file

    from cocoedit.actors.policies import family

    ckpt = Path(ckpt_dir)
    if view not in VIEWS:
        raise ValueError(f"--view {view!r} must be one of {VIEWS}")
    info_path, weights = ckpt / LORA_INFO, ckpt / f"lora_{view}.safetensors"
    if not info_path.is_file() or not weights.is_file():
        hint = (
            f"it is a run directory: pass one of its checkpoints ({ckpt}/checkpoints/epoch_*); "
            f"its latest theta is already in {ckpt / LORA_DIR}"
            if (ckpt / "checkpoints").is_dir()
            else "pass a checkpoint directory (RUN_DIR/checkpoints/epoch_*) written by `cocoedit train`"
        )
        raise FileNotFoundError(f"{ckpt} holds no {LORA_INFO} and lora_{view}.safetensors: {hint}")
    info = json.loads(info_path.read_text())
    pipeline_class = family(info["family"]).policy_class().pipeline_class()
    return write_lora_dir(load_file(str(weights)), info["adapter_metadata"], pipeline_class, out_dir)
