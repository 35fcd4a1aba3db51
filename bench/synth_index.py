"""What the driver's index of the synthetic task costs: pickled bytes and start-up time, for one or more
source trees (e.g. main's and a branch's) measured by the same script on the same machine.

    python bench/synth_index.py                          # this checkout (the installed cocoedit)
    python bench/synth_index.py --trees /tmp/main .      # each tree in its own process, alternately

Per tree: bytes of `pickle.dumps(load_index(...))` for 4096 items at 32 and 64 px (what Ray would copy
if the index were sent), and the wall time of `load_index` + `split_held_out` for
cluster/configs/tiny_cpu.yaml (its synth_num and run.eval_items; `cocoedit train` calls the second),
the driver's resident memory they added, and the time to generate one item (64 items in a batch):
medians over --repeats fresh processes. Timings on a shared machine are noisy:
compare trees within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(config: str) -> dict[str, float]:
    """The numbers of the cocoedit this process imports."""
    import pickle
    import time

    from cocoedit.actors.config import DataConfig
    from cocoedit.actors.data import load_index, split_held_out
    from cocoedit.actors.synth import synthetic_items
    from cocoedit.cluster.config import load_config

    cfg = load_config(config, [])
    rss = _rss_mb()
    start = time.perf_counter()
    load_index(cfg.data)
    middle = time.perf_counter()
    split_held_out(cfg.data, cfg.run.eval_items)  # what `cocoedit train` calls (preflight)
    end = time.perf_counter()
    out = {
        "load_index_s": middle - start,
        "split_held_out_s": end - middle,
        "index_and_split_s": end - start,
        "rss_added_mb": _rss_mb() - rss,
    }
    for size in (32, 64):
        out[f"pickled_bytes_4096_at_{size}px"] = len(
            pickle.dumps(load_index(DataConfig(image_size=size, synth_num=4096)))
        )
        start = time.perf_counter()
        synthetic_items(64, size, seed=1)  # what generating one item costs whoever generates it
        out[f"generate_ms_per_item_at_{size}px"] = (time.perf_counter() - start) / 64 * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="*", help="source trees to compare (each put first on PYTHONPATH)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="cluster/configs/tiny_cpu.yaml")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one or not args.trees:
        print(json.dumps(measure(args.config)))
        return
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in args.trees}
    for _ in range(args.repeats):
        for tree in args.trees:  # alternately, so load on the machine spreads over both
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            cmd = [sys.executable, __file__, "--one", "--config", str(Path(tree) / args.config)]
            line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[tree].append(json.loads(line.strip().splitlines()[-1]))
    for tree, rows in runs.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(tree, json.dumps({k: round(v, 3) for k, v in medians.items()}))


if __name__ == "__main__":
    main()
