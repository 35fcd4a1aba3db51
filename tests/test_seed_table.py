"""scripts/seed_table.py: the per-seed table and the paired comparison against reference runs that the
README's and docs/experiments.md's confirmation numbers come from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_dir(root: Path, name: str, synthetic: float, psnr: float) -> Path:
    d = root / name
    (d / "eval").mkdir(parents=True)
    changes = [
        {"metric": "synthetic", "first": 0.7, "last": synthetic, "diff": synthetic - 0.7, "half": 0.01},
        {"metric": "pixel/psnr", "first": 23.0, "last": psnr, "diff": psnr - 23.0, "half": 0.3},
    ]
    (d / "eval" / "summary.json").write_text(json.dumps({"eval": changes, "eval_train": []}))
    return d


def table(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "seed_table.py"),
        "--metrics",
        "synthetic,pixel/psnr",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_against_pairs_each_run_with_its_reference_per_seed(tmp_path):
    runs = [run_dir(tmp_path, f"a{s}", 0.70 + 0.01 * s, 22.0 + 0.1 * s) for s in range(3)]
    refs = [run_dir(tmp_path, f"r{s}", 0.71 + 0.01 * s, 21.5 + 0.1 * s) for s in range(3)]
    out = table(*map(str, runs), "--against", *map(str, refs))
    assert out.returncode == 0, out.stderr
    # every seed differs by exactly -0.01 and +0.5 dB: the paired interval is zero wide; unpaired it would not be
    assert "synthetic -0.0100 +- 0.0000, pixel/psnr +0.50 +- 0.00" in out.stdout


def test_against_needs_one_reference_per_run(tmp_path):
    runs = [run_dir(tmp_path, f"a{s}", 0.7, 22.0) for s in range(2)]
    out = table(*map(str, runs), "--against", str(runs[0]))
    assert out.returncode == 2
    assert "--against gives 1 reference runs for 2 runs" in out.stderr
