"""sha256 of the tiny editor's weights from a reduced build, to compare builds across thread settings.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/tiny_editor_digest.py [--unpinned]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/tiny_editor_digest.py [--unpinned]

Builds the tiny editor with 64 items, 40 VAE and 40 flow steps (~1 min of CPU) into a temporary
folder and prints the digest of every saved .safetensors file and the held-out numbers. `--unpinned`
skips `deterministic_cpu` (the build before issue 26): then the digest follows the thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

from cocoedit.actors import pretrain
from cocoedit.actors.config import PretrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--unpinned", action="store_true", help="build without deterministic_cpu")
    args = parser.parse_args()
    cfg = PretrainConfig(num_items=64, eval_items=8, vae_steps=40, steps=40, batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "editor"
        if args.unpinned:
            pretrain._pretrain_tiny(cfg, out, False)
        else:
            pretrain.pretrain_tiny(cfg, out)
        digest = hashlib.sha256()
        for f in sorted(out.rglob("*.safetensors")):
            digest.update(f.read_bytes())
        held_out = json.loads((out / "pretrain.json").read_text())["eval"]
    print(f"threads {torch.get_num_threads()} sha256 {digest.hexdigest()[:16]} held-out {held_out}")


if __name__ == "__main__":
    main()
