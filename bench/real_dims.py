"""Real model dimensions on CPU: the memory each role holds, measured, against `cocoedit plan`'s estimate.
Prints numbers; asserts nothing. Heavy: one role at a time, each in a fresh process (minutes each).

    python bench/real_dims.py memory --family flux_kontext --depth 1 --role learner
    python bench/real_dims.py memory --family qwen_image_edit --depth 2 --role rollout
    python bench/real_dims.py table                  # both families x depth 1, 2 x every role below
    python bench/real_dims.py batch-bytes --family flux_kontext   # a rollout batch as Ray ships it

The models are the real-dims editors of `cocoedit train --dry-run` (published widths, random weights,
FLUX: depth dual-stream + depth single-stream blocks), built once into $COCOEDIT_CACHE, in float32.
Roles (defaults: 512 px, what the dry run runs):
- rollout: RolloutWorker samples one group of 2 edits (dpm2, 1 step) and decodes them;
- learner / learner-nockpt: Learner.update on 2 edits, micro-batch 2, 1 timestep, ZeRO-2, with / without
  gradient checkpointing; its batch is encoded beforehand in another process.
Measured = peak RSS of the role's process minus its RSS once every library is imported (and, for the
learner, its batch loaded): what the role itself added. The weights are memory-mapped from the
safetensors files and only pages that are read count in RSS, so every weight of the role's policy is
read once after loading: RSS then holds what a copy on a GPU would. Estimated = `cocoedit plan`'s total for the
same settings on a CPU (no CUDA context). Absolute times on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLES = ("rollout", "learner", "learner-nockpt")
GIB = 2**30


def _rss_now() -> int:
    """Resident set size of this process now, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def overrides(args: argparse.Namespace, model_path: str) -> list[str]:
    """The run config of the measured role (the dry-run profile's counts, this model and size)."""
    return [
        f"policy.family={args.family}",
        f"policy.model_path={model_path}",
        "policy.device=cpu",
        "policy.dtype=float32",
        f"policy.gradient_checkpointing={'false' if args.role == 'learner-nockpt' else 'true'}",
        f"data.image_size={args.size}",
        "data.n_items=1",
        f"data.group_size={args.edits}",
        "rollout.num_workers=1",
        "rollout.gpus_per_worker=0",
        f"rollout.batch_size={args.edits}",
        f"rollout.num_steps={args.steps}",
        "learner.world_size=1",
        "learner.gpus_per_rank=0",
        f"learner.micro_batch_size={args.micro_batch}",
        "learner.train_timesteps=1",
        "learner.zero_stage=2",
        "learner.bf16=false",
    ]


def _items(size: int, n: int) -> list[Any]:
    from cocoedit.actors.synth import synthetic_items
    from cocoedit.actors.types import GroupedItem

    item = synthetic_items(1, size, seed=0)[0]
    return [GroupedItem(item, f"0:{item.item_id}", f"0:{item.item_id}:{k}", seed=k) for k in range(n)]


def _import_everything() -> None:
    """Every library a role uses, so that the baseline RSS holds them."""
    import deepspeed  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from cocoedit.actors import rollout  # noqa: F401
    from cocoedit.actors.policies import flux_kontext, qwen_image_edit  # noqa: F401
    from cocoedit.learner import learner  # noqa: F401


def _read_weights(policy: Any) -> None:
    """Read every parameter and buffer of the policy's modules once (pages of mapped files become resident)."""
    import torch

    with torch.no_grad():
        for module in policy.components().values():
            for t in [*module.parameters(), *module.buffers()]:
                t.sum()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one role in this (fresh) process; returns RSS numbers and what the role holds."""
    import torch

    from cocoedit.cluster.config import load_config
    from cocoedit.loopback import apply_loopback_env

    apply_loopback_env()
    torch.manual_seed(0)
    cfg = load_config(None, spec["overrides"])
    _import_everything()
    out: dict[str, Any] = {}
    if spec["role"] == "batch":
        from cocoedit.actors.rollout import RolloutWorker

        worker = RolloutWorker(cfg.policy, cfg.rollout)
        batch = worker.sample(_items(cfg.data.image_size, cfg.data.group_size), 0)
        torch.save(batch, spec["batch_file"])
        out["bytes"] = len(pickle.dumps(batch, protocol=5))
        return out
    if spec["role"] == "rollout":
        from cocoedit.actors.rollout import RolloutWorker

        items = _items(cfg.data.image_size, cfg.data.group_size)
        base = _rss_now()
        t0 = time.perf_counter()
        worker = RolloutWorker(cfg.policy, cfg.rollout)
        _read_weights(worker.policy)
        out["rss_loaded"] = _rss_now() - base
        batch = worker.sample(items, 0)
        out["seconds"] = time.perf_counter() - t0
        out["bytes"] = len(pickle.dumps(batch, protocol=5))
        policy = worker.policy
    else:
        from cocoedit.learner.learner import Learner

        batch = torch.load(spec["batch_file"], weights_only=False)
        base = _rss_now()
        t0 = time.perf_counter()
        learner = Learner(cfg.policy, cfg.learner)
        _read_weights(learner.policy)
        out["rss_loaded"] = _rss_now() - base
        n = len(batch)
        metrics = learner.update(batch, torch.linspace(-1, 1, n), torch.ones(n, dtype=torch.bool))
        out["seconds"] = time.perf_counter() - t0
        out["loss"] = metrics.get("loss/total")
        policy = learner.policy
    out["baseline"] = base
    out["peak"] = _rss_peak()
    out["params"] = {name: sum(p.numel() for p in m.parameters()) for name, m in policy.components().items()}
    return out


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec['role']} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One role at one depth: measured and estimated bytes."""
    from cocoedit.cluster.config import load_config
    from cocoedit.cluster.plan import learner_plan, policy_model, rollout_plan
    from cocoedit.cluster.train.dryrun import real_editor

    model_path = str(real_editor(args.family, args.depth))
    spec = {"role": args.role, "overrides": overrides(args, model_path)}
    if args.role != "rollout":
        batch_file = (
            Path(tempfile.gettempdir()) / f"real_dims_batch_{args.family}_d{args.depth}_{args.size}.pt"
        )
        if not batch_file.exists():
            made = _run_child(
                {"role": "batch", "overrides": spec["overrides"], "batch_file": str(batch_file)}
            )
            print(
                f"{args.family} depth {args.depth}: rollout batch of {args.edits} edits, {made['bytes'] / 2**20:.2f} MiB pickled"
            )
        spec["batch_file"] = str(batch_file)
    result = _run_child(spec)
    cfg = load_config(None, spec["overrides"])
    model = policy_model(args.family, model_path)
    if args.role == "rollout":
        role = rollout_plan(cfg, model, None)
    else:
        role = learner_plan(cfg, model, None, tuple(result["params"]))
    result["estimate"] = role.total
    result["estimate_lines"] = role.memory
    result["measured"] = result["peak"] - result["baseline"]
    return result


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    held = ", ".join(f"{k} {n / 1e6:.0f} M" for k, n in r["params"].items())
    return (
        f"{args.family:<16} depth {args.depth} {args.role:<15} measured {r['measured'] / GIB:6.2f} GiB "
        f"(peak RSS {r['peak'] / GIB:.2f}, libraries {r['baseline'] / GIB:.2f}, after load +{r['rss_loaded'] / GIB:.2f}) "
        f"estimate {r['estimate'] / GIB:6.2f} GiB  ratio {r['estimate'] / r['measured']:.3f}  "
        f"[{r['seconds']:.0f} s; holds {held}]"
    )


def cmd_memory(args: argparse.Namespace) -> None:
    r = measure(args)
    print(report(args, r), flush=True)
    for k, v in r["estimate_lines"].items():
        print(f"    estimate: {k:<70} {v / GIB:6.2f} GiB")


def cmd_table(args: argparse.Namespace) -> None:
    for family in args.families:
        for depth in args.depths:
            for role in args.roles:
                ns = argparse.Namespace(**{**vars(args), "family": family, "depth": depth, "role": role})
                print(report(ns, measure(ns)), flush=True)


def cmd_batch_bytes(args: argparse.Namespace) -> None:
    """Bytes of one sampled group as pickled for Ray (the worker -> driver -> learner payload)."""
    from cocoedit.cluster.train.dryrun import real_editor

    ns = argparse.Namespace(**{**vars(args), "role": "batch"})
    model_path = str(real_editor(args.family, args.depth))
    with tempfile.TemporaryDirectory() as tmp:
        r = _run_child(
            {"role": "batch", "overrides": overrides(ns, model_path), "batch_file": f"{tmp}/batch.pt"}
        )
    per_edit = r["bytes"] / args.edits
    print(
        f"{args.family} depth {args.depth}, {args.size} px, float32: rollout batch of {args.edits} edits = "
        f"{r['bytes'] / 2**20:.1f} MiB pickled ({per_edit / 2**20:.2f} MiB per edit); an epoch ships it "
        f"worker -> driver -> learner: {2 * r['bytes'] / 2**20:.1f} MiB through the object store"
    )


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("memory", "table", "batch-bytes"):
        s = sub.add_parser(name)
        s.add_argument("--size", type=int, default=512)
        s.add_argument("--edits", type=int, default=2, help="one group of this many edits")
        s.add_argument("--steps", type=int, default=1, help="rollout sampling steps")
        s.add_argument("--micro-batch", type=int, default=2)
        if name == "table":
            s.add_argument("--families", nargs="+", default=["flux_kontext", "qwen_image_edit"])
            s.add_argument("--depths", nargs="+", type=int, default=[1, 2])
            s.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
        else:
            s.add_argument("--family", default="flux_kontext")
            s.add_argument("--depth", type=int, default=1)
        if name == "memory":
            s.add_argument("--role", choices=ROLES, default="learner")
    args = p.parse_args()
    {"memory": cmd_memory, "table": cmd_table, "batch-bytes": cmd_batch_bytes}[args.cmd](args)


if __name__ == "__main__":
    main()
