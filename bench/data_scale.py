"""Data at scale: the driver's memory and start-up time against the number of items. Asserts nothing.

    python bench/data_scale.py                 # index of 1k, 10k, 40k items + the eager path for contrast
    python bench/data_scale.py --train         # and a tiny 2-epoch training run on the 40k manifest

The items are a 40k-line manifest whose lines point at a pool of a few hundred distinct synthetic
512 px images (`cocoedit data synth`; built once under --work). Each count is measured in a fresh
process: RSS after the imports a driver makes, then `load_index` (data.validate=sample, the default),
then RSS again and the peak. The index should cost a few hundred bytes per item and nothing that
grows with the images; the eager path (every item decoded, what the loop did before) is measured on
--eager items for contrast. --train runs `cocoedit train` with the tiny config (plus --overrides) on
the largest manifest and polls the driver's peak RSS (VmHWM) until it exits. Absolute times are upper bounds on a shared
machine; the per-item ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(pid: int | str, key: str) -> int:
    """VmRSS / VmHWM of a process, in kB (from /proc: Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _pool(work: Path, size: int, px: int) -> Path:
    from cocoedit.actors.synth import write_synthetic_dataset

    pool = work / f"pool-{size}x{px}"
    if not (pool / "manifest.jsonl").is_file():
        start = time.perf_counter()
        write_synthetic_dataset(pool, size, px, seed=0)
        print(
            f"pool: {size} synthetic items at {px} px written to {pool} in {time.perf_counter() - start:.0f} s"
        )
    return pool / "manifest.jsonl"


def _manifest(pool_manifest: Path, n: int) -> Path:
    """n lines with distinct ids, cycling through the pool's images (paths relative to the pool)."""
    out = pool_manifest.parent / f"manifest-{n}.jsonl"
    if not out.is_file():
        pool = [json.loads(line) for line in pool_manifest.read_text().splitlines()]
        lines = (json.dumps({**pool[i % len(pool)], "id": f"x{i:06d}"}) + "\n" for i in range(n))
        out.write_text("".join(lines))
    return out


def child_index(manifest: str, image_size: int) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    import pickle

    import ray  # noqa: F401 - the driver's imports, so the baseline is the driver's
    import torch  # noqa: F401

    from cocoedit.actors.config import DataConfig
    from cocoedit.actors.data import load_index

    before = _status_kb("self", "VmRSS")
    start = time.perf_counter()
    index = load_index(DataConfig(manifest=manifest, image_size=image_size))
    ready_s = time.perf_counter() - start
    after, peak = _status_kb("self", "VmRSS"), _status_kb("self", "VmHWM")
    refs = list(index.values())
    wire = len(pickle.dumps(refs)) / len(refs)
    print(
        json.dumps(
            dict(n=len(index), ready_s=ready_s, before_kb=before, after_kb=after, peak_kb=peak, wire=wire)
        )
    )


def child_eager(manifest: str, image_size: int, n: int) -> None:
    import ray  # noqa: F401
    import torch  # noqa: F401

    from cocoedit.actors.data import load_edit_data

    lines = Path(manifest).read_text().splitlines()[:n]
    subset = Path(manifest).with_name(f"eager-{n}.jsonl")
    subset.write_text("\n".join(lines) + "\n")
    before = _status_kb("self", "VmRSS")
    start = time.perf_counter()
    items = load_edit_data(subset, "manifest", image_size)
    ready_s = time.perf_counter() - start
    after = _status_kb("self", "VmRSS")
    print(json.dumps(dict(n=len(items), ready_s=ready_s, before_kb=before, after_kb=after)))


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_peak(manifest: Path, run_dir: Path, epochs: int, overrides: list[str]) -> tuple[float, float, int]:
    """(driver peak RSS MB, wall s, exit code) of a tiny `cocoedit train` run on `manifest`."""
    overrides = [f"data.manifest={manifest}", f"run.epochs={epochs}", f"run.run_dir={run_dir}", *overrides]
    # the tiny editor is built (once, cached) by another process, so the driver's peak is the run's
    build = "from cocoedit.cluster.config import load_config; from cocoedit.cluster.runtime.launch import resolve_models; "
    build += f"resolve_models(load_config(None, {overrides!r}))"
    subprocess.run([sys.executable, "-c", build], cwd=ROOT, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "cocoedit.cluster.cli", "train", *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(run_dir.with_suffix(".log"), "w")
    )
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _status_kb(proc.pid, "VmHWM"))
        except (FileNotFoundError, ProcessLookupError, KeyError):
            pass
        time.sleep(0.2)
    return peak / 1024, time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/cocoedit_data_scale")
    parser.add_argument("--counts", default="1000,10000,40000")
    parser.add_argument("--pool", type=int, default=300, help="distinct images")
    parser.add_argument("--pool-px", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32, help="data.image_size (the tiny config's)")
    parser.add_argument("--eager", type=int, default=200, help="items decoded by the eager path (0: skip)")
    parser.add_argument("--eager-size", type=int, default=512, help="data.image_size of the eager path")
    parser.add_argument("--train", action="store_true", help="also a tiny 2-epoch run on the largest count")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides of the --train run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, manifest, size, *rest = args.child
        child_index(manifest, int(size)) if kind == "index" else child_eager(
            manifest, int(size), int(rest[0])
        )
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool = _pool(work, args.pool, args.pool_px)
    counts = [int(c) for c in args.counts.split(",")]
    rows = [_child("--child", "index", str(_manifest(pool, n)), str(args.image_size)) for n in counts]
    print(
        f"\nindex (driver side), data.validate=sample, images {args.pool_px} px -> data.image_size {args.image_size}"
    )
    print(
        f"{'items':>8} {'ready s':>8} {'RSS MB':>8} {'+index MB':>10} {'peak MB':>8} {'B/item':>7} {'wire B/item':>12}"
    )
    for r in rows:
        grown = (r["after_kb"] - r["before_kb"]) * 1024
        print(
            f"{r['n']:>8} {r['ready_s']:>8.2f} {r['after_kb'] / 1024:>8.0f} {grown / 2**20:>10.1f} "
            f"{r['peak_kb'] / 1024:>8.0f} {grown / r['n']:>7.0f} {r['wire']:>12.0f}"
        )
    first, last = rows[0], rows[-1]
    per_item = (last["after_kb"] - first["after_kb"]) * 1024 / max(last["n"] - first["n"], 1)
    if len(rows) > 1:
        print(f"RSS per item from {first['n']} to {last['n']} items: {per_item:.0f} bytes")
    print(f"start-up per item: {last['ready_s'] / last['n'] * 1e6:.0f} us at {last['n']} items")

    if args.eager:
        e = _child(
            "--child", "eager", str(_manifest(pool, counts[-1])), str(args.eager_size), str(args.eager)
        )
        grown = (e["after_kb"] - e["before_kb"]) * 1024
        print(
            f"\neager (every item decoded into the driver, the loop's old path) at data.image_size "
            f"{args.eager_size}: {e['n']} items {grown / 2**20:.0f} MB, {grown / e['n'] / 2**20:.2f} MB/item, "
            f"{e['ready_s'] / e['n'] * 1e3:.0f} ms/item -> {last['n']} items would be "
            f"{grown / e['n'] * last['n'] / 2**30:.1f} GB and {e['ready_s'] / e['n'] * last['n'] / 60:.0f} min; "
            f"the index costs {grown / e['n'] / max(per_item, 1):.0f}x less per item"
        )

    if args.train:
        run_dir = work / f"run-{counts[-1]}"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        peak_mb, wall_s, rc = train_peak(_manifest(pool, counts[-1]), run_dir, 2, args.overrides)
        print(
            f"\ntiny training run, 2 epochs on {counts[-1]} items: exit {rc}, driver peak RSS (VmHWM) "
            f"{peak_mb:.0f} MB, wall {wall_s:.0f} s (log: {run_dir.with_suffix('.log')})"
        )


if __name__ == "__main__":
    main()
