"""Shared pieces of the rating tests: eval runs of the synthetic task, a rating server in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from cocoedit.cluster.cli import main as cli_main

SIZE = 32


def eval_runs(root: Path, num: int) -> dict[str, Path]:
    """`cocoedit eval` runs of `num` synthetic items: target (perfect edits), source (no edit), and
    half (a copy of the source run whose edits are the 50/50 blend of source and target)."""
    data = root / "synth"
    assert cli_main(["data", "synth", "--out", str(data), "--num", str(num), "--size", str(SIZE)]) == 0
    runs = {}
    for edits in ("target", "source"):
        runs[edits] = root / "runs" / edits
        argv = [
            "eval",
            "--bench",
            "manifest",
            "--data",
            str(data),
            "--out",
            str(runs[edits]),
            "--edits",
            edits,
        ]
        assert cli_main([*argv, f"eval.image_size={SIZE}"]) == 0
    runs["half"] = root / "runs" / "half"
    shutil.copytree(runs["source"], runs["half"])
    for png in (runs["half"] / "edits").glob("*.png"):
        src = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
        tgt = np.asarray(Image.open(runs["target"] / "edits" / png.name).convert("RGB"), dtype=np.float64)
        Image.fromarray(((src + tgt) / 2).round().astype(np.uint8)).save(png)
    return runs


def image_owner(study: Path) -> dict[str, str]:
    """sha256 of an image's bytes -> the system (or "check:good" / "check:bad") it shows."""
    design = json.loads((study / "design.json").read_text())
    owner = {}
    for item in design["items"]:
        for name, rel in item["edits"].items():
            owner[hashlib.sha256((study / rel).read_bytes()).hexdigest()] = name
    for c in design["checks"]:
        for role in ("good", "bad"):
            owner.setdefault(hashlib.sha256((study / c[role]).read_bytes()).hexdigest(), f"check:{role}")
    return owner


class Server:
    """`cocoedit rate serve STUDY --port 0` in a subprocess; .url once it listens."""

    def __init__(self, study: Path, port: int = 0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cocoedit.cluster.cli", "rate", "serve", str(study), "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        while True:
            line = lines.get(timeout=120)
            if line.startswith("serving "):
                self.url = line.split(" on ")[1].strip().rstrip("/")
                return

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
