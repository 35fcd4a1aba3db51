"""Scale by simulation: both shipped configs at 8, 16, 32 (64) simulated GPUs on a local multi-node Ray
cluster (`cocoedit simulate`: real driver, actor groups, gRPC services, learner data path; GPU calls
held for the time plan's seconds / --time-scale). Asserts nothing; prints a table.

    python bench/sim_cluster.py                                   # 8, 16, 32 GPUs, both configs
    python bench/sim_cluster.py --gpus 8 16 --time-scale 10 --n-items 8 --epochs 2
    python bench/sim_cluster.py --configs flux_kontext_8gpu --gpus 8 --image-size 256 512 --tree /tmp/main-copy
        # the same runs of another checkout (--tree, e.g. `git archive main`) first: before / after in one table

Each size runs in a fresh `cocoedit simulate` process (the driver's CPU seconds and peak RSS are its
own). Sizes scale every count of the config (rollout workers, learner ranks, judge and pixel replicas)
and data.n_items (weak scaling: the same work per GPU); --n-items sets the 8-GPU epoch's items
(the shipped configs' 24 would take minutes per epoch on 2 cores). The table's row is the LAST epoch
(the first includes warm-up). Columns:
- epoch: measured wall seconds; plan: the time plan's critical path / time scale; eff = plan / epoch;
- idle: 1 - (seconds the role's simulated GPUs were held) / (actors x epoch), per role;
- driver: CPU seconds in the epoch and peak RSS of the driver process (MB);
- MB/epoch and kB/edit into the driver (what it receives from the rollout workers), out of it (what it
  sends the learner ranks) and over gRPC (every request to every service); kB/edit a service needs: the
  PNGs each service reads (pixel: source, edited, mask; judge: source, edited), each image once;
- LoRA sync: the real LoRA's float32 bytes through the object store per epoch (rank 0 -> driver ->
  each worker), modelled from its parameter count, not moved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "flux_kontext_8gpu": ("cluster/configs/flux_kontext_8gpu.yaml", 8),
    "qwen_image_edit_16gpu": ("cluster/configs/qwen_image_edit_16gpu.yaml", 16),
}


def run_one(
    config: str, base_gpus: int, gpus: int, args: argparse.Namespace, work: Path, size: int, tree: Path
) -> dict:
    scale = gpus / base_gpus
    label = "" if tree == ROOT else f"{tree.name}-"
    name = f"{label}{Path(config).stem}-{gpus}gpu-ts{args.time_scale:g}-n{args.n_items}-{size}px"
    out = work / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "cocoedit.cluster.cli",
        "simulate",
        "--config",
        config,
        "--scale",
        f"{scale:g}",
        "--epochs",
        str(args.epochs),
        "--time-scale",
        f"{args.time_scale:g}",
        "--n-items",
        str(max(1, round(args.n_items * base_gpus / 8))),  # --n-items is per 8 GPUs
        "--work",
        str(work / name),
        "--json",
        str(out),
        *(["--keep-cpu-services"] if args.keep_cpu_services else []),
        f"data.image_size={size}",
    ]
    start = time.perf_counter()
    # another checkout's code (--tree) is imported ahead of this one's: its root first on the path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    with open(work / f"{name}.log", "w") as log:
        rc = subprocess.run(
            cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout_s, env=env
        ).returncode
    load = os.getloadavg()[0]
    if rc != 0 or not out.is_file():
        return {"name": name, "gpus": gpus, "failed": f"exit {rc}, see {work / name}.log", "load": load}
    summary = {
        **json.loads(out.read_text()),
        "load": load,
        "wall_s": time.perf_counter() - start,
        "tree": "this checkout" if tree == ROOT else str(tree),
        "image_size": size,
    }
    out.write_text(json.dumps(summary, indent=1))  # with the machine's load: the table can be rebuilt
    return {"name": name, "gpus": gpus, **summary}


def row_text(r: dict) -> str:
    if "failed" in r:
        return f"| {r['name']} | {r['gpus']} | failed: {r['failed']} |"
    tree = "" if r.get("tree", "this checkout") == "this checkout" else f" ({Path(r['tree']).name})"
    e = r["epochs"][-1]
    idle = " / ".join(f"{100 * e['idle'].get(k, float('nan')):.0f}" for k in ("rollout", "learner", "judge"))
    n = r["edits_per_epoch"]
    b = e["bytes"]
    mb = 2**20
    return (
        f"| {r['config']}{tree} | {r.get('image_size', '')} | {r['simulated_gpus']:g} ({r['nodes']} nodes) | "
        f"{r['time_scale']:g} | {n} | {e['epoch_s']:.1f} | "
        f"{e['critical_path_s']:.1f} | {100 * e['efficiency']:.0f}% | {idle} | {e['driver_cpu_s']:.1f} | "
        f"{e['driver_peak_rss_mb']:.0f} | {b['driver_in'] / mb:.0f} / {b['driver_out'] / mb:.0f} / {b['grpc'] / mb:.0f} | "
        f"{b['driver_in'] / n / 1024:.0f} / {b['driver_out'] / n / 1024:.0f} / {b['grpc'] / n / 1024:.0f} | "
        f"{b.get('grpc_needed', float('nan')) / n / 1024:.0f} | "
        f"{e['lora_sync_bytes_modelled'] / mb:.0f} | {r['load']:.1f} |"
    )


HEADER = (
    "| config | px | simulated GPUs | time scale | edits/epoch | epoch s | plan s | eff | idle % rollout / learner / judge | "
    "driver CPU s | driver peak RSS MB | MB/epoch in / out / gRPC | kB/edit in / out / gRPC | "
    "kB/edit a service needs | LoRA sync MB (modelled) | load avg |\n|" + "---|" * 16
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--n-items", type=int, default=8, help="data.n_items per 8 simulated GPUs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--keep-cpu-services", action="store_true", help="pixel replicas not scaled (memory on this machine)"
    )
    parser.add_argument(
        "--image-size", type=int, nargs="+", default=[512], help="data.image_size of each run"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="also run another checkout's code (e.g. main's) first, same settings",
    )
    parser.add_argument("--timeout-s", type=float, default=1200)
    parser.add_argument("--work", default="/tmp/cocoedit-sim-cluster")
    parser.add_argument(
        "--table", action="store_true", help="run nothing: the table of the summaries already in --work"
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.table:
        paths = work.glob("*gpu-*.json")
        for path in sorted(
            paths, key=lambda p: (p.name.split("-")[0], json.loads(p.read_text())["simulated_gpus"])
        ):
            summary = json.loads(path.read_text())
            rows.append(
                {"name": path.stem, "gpus": summary["simulated_gpus"], "load": float("nan"), **summary}
            )
    trees = [] if args.table else [t.resolve() for t in ([args.tree] if args.tree else [])] + [ROOT]
    for tree in trees:
        for name in args.configs:
            config, base = CONFIGS[name]
            for gpus in args.gpus:
                for size in args.image_size:
                    rows.append(run_one(config, base, gpus, args, work, size, tree))
                    print(row_text(rows[-1]), flush=True)
    print(
        f"\nSIMULATED: GPU calls held for the time plan's seconds (h100, MFU 0.4) / time scale "
        f"{args.time_scale:g}; {args.n_items} items x 12 edits per 8 GPUs; last of {args.epochs} epochs; "
        f"all nodes are raylets on this machine ({os.cpu_count()} CPU cores)\n"
    )
    print(HEADER)
    for r in rows:
        print(row_text(r))
    (work / "table.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
