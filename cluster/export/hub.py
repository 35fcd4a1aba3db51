"""`cocoedit export`: a checkpoint's LoRA for diffusers, with its model card, optionally pushed to the Hub.

    cocoedit export --checkpoint RUN_DIR/checkpoints/epoch_00000060 --out DIR [--view default|old]
                    [--push-to-hub OWNER/NAME [--private]]

DIR gets `pytorch_lora_weights.safetensors` (learner/export.py) and `README.md`, the model card
(cluster/export/card.py): the run's own card (`RUN_DIR/lora/README.md`, with the final evaluation) when the
checkpoint is the run's latest theta, else one written from the run's config.yaml without an evaluation.
`--push-to-hub` uploads DIR as a model repository with huggingface_hub (its token and `HF_ENDPOINT`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

from cocoedit.cluster.export.card import CARD, tokenizer_limit, write_card
from cocoedit.learner.checkpoint import latest_checkpoint
from cocoedit.learner.export import export_lora


def export_card(ckpt: Path, out: Path, view: str) -> Optional[Path]:
    """The model card of checkpoint `ckpt` into `out`; None when its run's config.yaml is missing."""
    from cocoedit.cluster.config import load_config

    run_dir = ckpt.parent.parent
    run_card = run_dir / "lora" / CARD
    if view == "default" and run_card.is_file() and latest_checkpoint(run_dir) == ckpt:
        shutil.copyfile(run_card, out / CARD)
        return out / CARD
    if not (run_dir / "config.yaml").is_file():
        return None
    cfg = load_config(run_dir / "config.yaml")
    state = json.loads((ckpt / "learner_state.json").read_text())
    epoch = state.get("extra_state", {}).get("epoch")
    return write_card(
        cfg,
        out,
        int(epoch) + 1 if epoch is not None else 0,
        int(state["step"]),
        None,
        tokenizer_limit(cfg.policy.model_path),
    )


def push(folder: Path, repo: str, private: bool) -> str:
    """Upload `folder` as model repository `repo` (created if missing); returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="cocoedit export"
    )
    return str(info.commit_url)


def cli_export(args: argparse.Namespace) -> int:
    """Entry point of `cocoedit export` (see the module docstring)."""
    ckpt, out = Path(args.checkpoint), Path(args.out)
    try:
        path = export_lora(ckpt, out, args.view)
    except (FileNotFoundError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print(f"{args.view} LoRA of {args.checkpoint} written to {path} (pipe.load_lora_weights({args.out!r}))")
    card = export_card(ckpt, out, args.view)
    print(
        f"model card: {card}" if card else f"no model card: {ckpt.parent.parent / 'config.yaml'} is missing"
    )
    if args.push_to_hub:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            url = push(out, args.push_to_hub, args.private)
        except (HfHubHTTPError, OSError, ValueError) as e:
            print(f"export --push-to-hub {args.push_to_hub}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"pushed to {args.push_to_hub}: {url}")
    return 0
