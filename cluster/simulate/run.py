"""`cocoedit simulate`: the real driver, placement, rollout queue, actor groups, reward services and
learner data path on a local multi-node Ray cluster, with the GPU compute SIMULATED: the `sim` editor
(actors/policies/sim.py) and `sim_judge` (rewards/sim_judge.py) hold each call for its time in the
time plan / --time-scale. The pixel service and everything else run for real.

    cocoedit simulate --config cluster/configs/flux_kontext_8gpu.yaml --time-scale 20 --epochs 2
    cocoedit simulate --config cluster/configs/qwen_image_edit_16gpu.yaml --scale 2 --sim-nodes 4 --json out.json
    cocoedit simulate --config ... --epochs 4 --resume     # on from the latest checkpoint (run.checkpoint_every)

Prints, per epoch and for the run: measured epoch time against the plan's critical path / time scale
(efficiency), each simulated role's idle fraction, the driver's CPU seconds and peak RSS, and bytes
through the driver and over gRPC, per epoch and per edit; writes the same to RUN_DIR/simulation.json.
Every line says SIMULATED and the time scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.config import Config

if TYPE_CHECKING:  # the parser is built by every cocoedit command: nothing heavy at import
    from cocoedit.cluster.simulate.model import Simulated

log = logging.getLogger("cocoedit.simulate")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run the real system on a local multi-node Ray cluster with SIMULATED GPU compute",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--time-scale", type=float, default=20.0, help="simulated seconds per wall second")
    p.add_argument("--sim-nodes", type=int, default=None, help="raylets (default: one per 8 simulated GPUs)")
    p.add_argument(
        "--scale", type=float, default=1.0, help="x workers, ranks, replicas and data.n_items (0.5: half)"
    )
    p.add_argument(
        "--n-items", type=int, default=None, help="data.n_items before --scale (default: config's)"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--gpu", default="h100", help="the simulated GPU (cluster/plan/time.py GPUS)")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--work", default=None, help="work directory (default: $COCOEDIT_CACHE/simulate/<name>)")
    p.add_argument("--json", default=None, help="also write the summary here")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the simulated run of --work from its latest checkpoint (same options, more --epochs)",
    )
    p.add_argument(
        "--keep-cpu-services",
        action="store_true",
        help="--scale leaves the replicas of CPU-only reward services (pixel) as the config has them",
    )
    p.add_argument(
        "--no-lora-count",
        action="store_true",
        help="skip counting the simulated LoRA (its sync bytes are then not modelled; saves ~15 s)",
    )
    p.add_argument("--config", default=None, help="experiment YAML to simulate (a GPU config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of that config")


def simulate(
    sim: Simulated, nodes: int, gpus_per_node: int, epochs: int, resume: bool = False
) -> dict[str, Any]:
    """Run `epochs` simulated epochs of sim.cfg on a local cluster of `nodes` x `gpus_per_node`
    simulated GPUs (with `resume`, those after the latest checkpoint of its run directory); returns the
    summary of the epochs run (also written to RUN_DIR/simulation.json)."""
    import ray

    from cocoedit.cluster.runtime.placement import demands
    from cocoedit.cluster.simulate.cluster import local_cluster
    from cocoedit.cluster.simulate.measure import Meter, placement, rollout_held
    from cocoedit.cluster.train.loop import run_epochs, start_run

    cfg = dataclasses.replace(sim.cfg, run=dataclasses.replace(sim.cfg.run, epochs=epochs))
    run_dir = Path(cfg.run.run_dir)
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # the simulation's own directory under --work
    cpus = sum(d.total("CPU") for d in demands(cfg))
    cpus_per_node = math.ceil(cpus / nodes) + 2  # logical: Ray's accounting, not cores
    scale = sim.settings.time_scale
    log.info("%s; %d nodes x %d simulated GPUs", sim.describe(), nodes, gpus_per_node)
    rows: list[dict[str, Any]] = []
    with local_cluster(nodes, gpus_per_node, cpus_per_node), start_run(cfg, resume) as run:
        meter = Meter(run)
        where = placement(run)
        before = meter.snapshot()
        for epoch, row in run_epochs(run):
            after = meter.snapshot()
            rows.append(_epoch_row(sim, cfg, epoch, row, before, after))
            log.info("SIMULATED epoch %d (time scale %g): %s", epoch, scale, _short(rows[-1]))
            before = after
        sampled = rollout_held(run) / max(len(rows), 1)  # every epoch samples one batch of the same size
        for r in rows:
            r["idle"]["rollout"] = 1 - sampled / (cfg.rollout.num_workers * r["epoch_s"])
        node_count = len([n for n in ray.nodes() if n.get("Alive")])
    summary = {
        "simulated": True,
        "what": sim.describe(),
        "time_scale": scale,
        "gpu": sim.settings.gpu,
        "mfu": sim.settings.mfu,
        "family": sim.original.policy.family,
        "config": sim.original.run.name,
        "scale": sim.settings.scale,
        "simulated_gpus": sum(d.total("GPU") for d in demands(cfg)),
        "nodes": node_count,
        "gpus_per_node": gpus_per_node,
        "edits_per_epoch": cfg.data.n_items * cfg.data.group_size,
        "seconds_per_call": sim.seconds,
        "plan": {
            "epoch_s": sim.plan.epoch_s,
            "sample_stage_s": sim.plan.sample_stage_s,
            "learn_stage_s": sim.plan.learn_stage_s,
            "roles": {r.work.role: r.seconds for r in sim.plan.roles},
        },
        "placement": where,
        "nodes_used": sorted({n for ids in where.values() for n in ids}),
        "epochs": rows,
        "run_dir": str(run_dir),
    }
    (run_dir / "simulation.json").write_text(json.dumps(summary, indent=1))
    _mark_metrics(run_dir / "metrics.jsonl", scale)
    return summary


def _mark_metrics(path: Path, time_scale: float) -> None:
    """Every row of the run's metrics.jsonl gets `simulated/time_scale`: its times are wall seconds of a
    simulation, and a reader of the file alone must be able to tell."""
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({**r, "simulated/time_scale": time_scale}) + "\n" for r in rows))


def _epoch_row(
    sim: Simulated, cfg: Config, epoch: int, row: dict[str, float], a: dict[str, float], b: dict[str, float]
) -> dict[str, Any]:
    """One epoch of the simulation: measured against the plan (all times wall seconds)."""
    scale, edits = sim.settings.time_scale, cfg.data.n_items * cfg.data.group_size
    expected = sim.plan.epoch_s / scale
    lr = cfg.learner
    judge = cfg.rewards.service("sim_judge").scaling.replicas if "sim_judge" in cfg.rewards.weights else 0
    judge_held = row.get("sim_judge/simulated_held_s", 0.0) * edits
    d = {k: b[k] - a[k] for k in b if not k.endswith("rss_mb")}
    # from the previous epoch's yield to this one's: the loop's own time/epoch_s leaves out what runs
    # after its row is made (logging, the next batch sampling meanwhile), which an epoch still costs
    wall = d["wall_s"]
    # float32, from rank 0's object store to each worker (through the driver too until 2026-12-07: + 1 copy)
    lora_bytes = 4 * sim.lora_params * cfg.rollout.num_workers
    out = {
        "epoch": epoch,
        "simulated": True,
        "epoch_s": wall,
        "loop_timer_epoch_s": float(row["time/epoch_s"]),
        "critical_path_s": expected,
        "efficiency": expected / wall if wall > 0 else float("nan"),
        "idle": {  # rollout: filled in after the run (measure.rollout_held)
            "learner": 1 - d["held/learner"] / (lr.world_size * wall),
            **({"judge": 1 - judge_held / (judge * wall)} if judge else {}),
        },
        "driver_cpu_s": d["driver_cpu_s"],
        "driver_peak_rss_mb": b["driver_peak_rss_mb"],
        "driver_rss_mb": b["driver_rss_mb"],
        "bytes": {
            "driver_in": d["driver_in_bytes"],
            "driver_out": d["driver_out_bytes"],
            "grpc": d["grpc_bytes"],
            "grpc_needed": d.get("needed_bytes", float("nan")),  # the images each service reads, once
        },
        "bytes_per_edit": {
            "driver_in": d["driver_in_bytes"] / edits,
            "driver_out": d["driver_out_bytes"] / edits,
            "grpc": d["grpc_bytes"] / edits,
        },
        "lora_sync_bytes_modelled": lora_bytes,
        "stages_s": {
            k.removeprefix("time/").removesuffix("_s"): v for k, v in row.items() if k.startswith("time/")
        },
        "reward_mean": row.get("reward/mean"),
        "pixel_score": row.get("reward/pixel"),
        "sim_judge_score": row.get("reward/sim_judge"),
        "dropped_edits": row.get("reward/dropped_edits"),
        "learner_step": row.get("learner/step"),
    }
    return out


def _short(row: dict[str, Any]) -> str:
    return (
        f"{row['epoch_s']:.1f} s (critical path {row['critical_path_s']:.1f} s, efficiency "
        f"{100 * row['efficiency']:.0f}%), idle "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["idle"].items())
        + f", driver CPU {row['driver_cpu_s']:.1f} s, peak RSS {row['driver_peak_rss_mb']:.0f} MB, "
        f"{row['bytes']['driver_in'] / 2**20:.0f} MB into the driver, {row['bytes']['grpc'] / 2**20:.0f} MB over gRPC"
    )


def cli_simulate(args: argparse.Namespace, cfg: Config) -> int:
    from cocoedit.cluster.simulate.model import SimSettings, nodes_for, simulated_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = SimSettings(
        args.time_scale,
        args.gpu,
        args.mfu,
        args.scale,
        True,
        args.n_items,
        not args.keep_cpu_services,
        not args.no_lora_count,
    )
    from cocoedit.cluster.runtime.launch import cache_dir
    from cocoedit.cluster.train.loop import RUN_ERRORS
    from cocoedit.cluster.train.stop import EXIT_CODE, Stopped

    # what ends `cocoedit train` with one line ends this too, and a simulation's own bad values
    ends_with_one_line: tuple[type[Exception], ...] = (*RUN_ERRORS, ValueError)

    work = Path(args.work) if args.work else cache_dir() / "simulate" / f"{cfg.run.name}-x{args.scale:g}"
    try:
        # in a child process: the plan builds the simulated model on the meta device, which would
        # count in the driver's peak RSS
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            sim = pool.submit(simulated_config, cfg, settings, work).result()
        nodes, per_node = nodes_for(sim.cfg, args.sim_nodes)
        summary = simulate(sim, nodes, per_node, args.epochs, args.resume)
    except ends_with_one_line as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Stopped as e:  # SIGTERM: every part is closed
        print(f"Stopped: {e}", file=sys.stderr)
        return EXIT_CODE
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


def format_summary(s: dict[str, Any], epoch: Optional[int] = None) -> str:
    """The summary as text: every line marked SIMULATED with the time scale."""
    lines = [
        f"SIMULATED run ({s['what']})",
        f"  {s['simulated_gpus']:g} simulated GPUs on {s['nodes']} local raylets, {s['edits_per_epoch']} edits per "
        f"epoch; nodes used by actors: {len(s['nodes_used'])}",
    ]
    for row in s["epochs"] if epoch is None else [s["epochs"][epoch]]:
        lines.append(f"  SIMULATED epoch {row['epoch']} (time scale {s['time_scale']:g}): {_short(row)}")
        lines.append(
            f"      rewards: mean {row['reward_mean']}, pixel (real service) {row['pixel_score']}, "
            f"sim_judge (simulated, over gRPC) {row['sim_judge_score']}"
        )
    return "\n".join(lines)
