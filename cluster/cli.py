"""The `cocoedit` command line.

    cocoedit data synth --out DIR --num N --size PX --seed S
    cocoedit data check MANIFEST [--format F] [--root DIR]
    cocoedit data curate --input IN [IN ...] --out DIR [--num N] [--format manifest|cocoedit40k] [key=value ...]
    cocoedit config show [--config FILE] [--dry-run] [--explain] [key=value ...]
    cocoedit train [--config FILE] [--resume [CHECKPOINT] | --overwrite] [--dry-run] [key=value ...]
    cocoedit sweep [--config FILE] --grid KEY=V1,V2 [--grid ...] [--seeds N] [--out DIR] [key=value ...]
    cocoedit search [--config FILE] --space KEY=SPEC [--space ...] [--trials N] [--reference K=V,...] [--start K=V,...] [--out DIR] [key=value ...]
    cocoedit pretrain-tiny --out DIR
    cocoedit plan [--config FILE] [--gpu h100|h200|a100|l40s] [--mfu F] [--gpu-memory GiB] [--dry-run] [key=value ...]
    cocoedit build-model --family F [--dims tiny|real] [--depth N] --out DIR
    cocoedit serve pixel|mllm|synthetic [--host H] [--port P] [--model PATH] [key=value ...]
    cocoedit edit --model DIR [--lora FILE|DIR] --image IN --instruction TEXT --out OUT
    cocoedit export --checkpoint DIR --out DIR [--view default|old] [--push-to-hub OWNER/NAME]
    cocoedit eval [run] --config FILE --bench NAME (cluster/eval/benchmarks: BENCHMARKS) --data DIR [--lora FILE|DIR ...] [--out DIR]
    cocoedit eval compare RUN_A RUN_B [--out FILE.html]
    cocoedit rate new|serve|report|simulate ...   (cluster/rate/commands.py)
    cocoedit simulate --config FILE [--time-scale S] [--sim-nodes N] [--scale K] [--epochs E] [--resume] [key=value ...]

Each subcommand lives next to the component it runs; this module only parses and dispatches.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cocoedit.actors.policies import FAMILIES
from cocoedit.cluster.eval.benchmarks import BENCHMARKS
from cocoedit.cluster.plan.time import GPUS

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

# subcommand -> (module, function, takes the config). A command that takes the config gets it loaded
# here, once, from --config and the overrides: `function(args, cfg)`; a bad config exits 1 with the message.
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "data synth": ("cocoedit.actors.synth", "cli_synth", False),
    "data check": ("cocoedit.actors.data", "cli_check", False),
    "data curate": ("cocoedit.cluster.curate.pipeline", "cli_curate", True),
    "config show": ("cocoedit.cluster.cli", "cli_show_config", True),
    "train": ("cocoedit.cluster.train.loop", "cli_train", True),
    "sweep": ("cocoedit.cluster.sweep.tune", "cli_sweep", True),
    "search": ("cocoedit.cluster.sweep.search", "cli_search", True),
    "pretrain-tiny": ("cocoedit.cluster.cli", "cli_pretrain", True),
    "plan": ("cocoedit.cluster.plan", "cli_plan", True),
    "build-model": ("cocoedit.actors.policies.builders", "cli_build_model", False),
    "serve": ("cocoedit.cluster.cli", "cli_serve", True),
    "edit": ("cocoedit.actors.edit", "cli_edit", False),
    "export": ("cocoedit.cluster.export.hub", "cli_export", False),
    "eval run": ("cocoedit.cluster.eval.evaluate", "cli_eval", True),
    "eval compare": ("cocoedit.cluster.eval.evaluate", "cli_compare", False),
    "rate new": ("cocoedit.cluster.rate.commands", "cli_new", False),
    "rate serve": ("cocoedit.cluster.rate.commands", "cli_serve", False),
    "rate report": ("cocoedit.cluster.rate.commands", "cli_report", False),
    "rate simulate": ("cocoedit.cluster.rate.simulate", "cli_simulate", False),
    "simulate": ("cocoedit.cluster.simulate.run", "cli_simulate", True),
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="experiment YAML (default: cluster/configs/tiny_cpu.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. learner.lr=1e-4")


def _add_dry_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the config shrunk to this machine: CPUs only, one worker/rank/replica, one epoch of one group, "
        "the real-dims editor at depth 1 and the synthetic judge (cluster/train/dryrun.py)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoedit", description="Region-regularized RL for image editors (CoCoEdit)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="edit-data manifests and the synthetic edit task")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser(
        "synth", help="write the synthetic edit task (images, masks, targets, manifest)"
    )
    synth.add_argument("--out", required=True)
    synth.add_argument("--num", type=int, default=64)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    check = data_sub.add_parser("check", help="validate a manifest and print a summary")
    check.add_argument("manifest")
    check.add_argument("--format", choices=["manifest", "cocoedit40k", "benchmask"], default="manifest")
    check.add_argument("--mask-polarity", choices=["edit_white", "keep_white"], default=None)
    check.add_argument("--root", default=None, help="folder the paths are relative to (default: the file's)")
    curate = data_sub.add_parser(
        "curate", help="turn editing datasets (source, target, instruction) into a masked training set"
    )
    curate.add_argument("--input", nargs="+", required=True, help="JSONL / Parquet files or folders of them")
    curate.add_argument("--out", required=True, help="output folder; a rerun resumes an interrupted run")
    curate.add_argument(
        "--num", type=int, default=None, help="N items balanced over edit types (default: all)"
    )
    curate.add_argument(
        "--format",
        choices=["manifest", "cocoedit40k"],
        default=None,
        help="manifest.jsonl (white = edit) or CoCoEdit-40K metadata.jsonl (white = keep); default curate.output_format",
    )
    _add_config_args(curate)

    config = sub.add_parser("config", help="show the resolved config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    _add_dry_run_arg(show)
    show.add_argument(
        "--explain", action="store_true", help="every key with its one-line description (cluster/explain.py)"
    )

    train = sub.add_parser(
        "train",
        help="run RL post-training (default: the tiny CPU config)",
        description="Run the training loop. The resolved config of this invocation is printed below "
        "the options when --help is given together with --config/overrides; `cocoedit config show` prints it too.",
    )
    _add_config_args(train)
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the latest complete checkpoint of run.run_dir, or from CHECKPOINT (a checkpoint "
        "directory, or a run directory: its latest), from that run's own config.yaml; the command line may change "
        "only run length, logging and where it runs, and each change is printed",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run.run_dir that holds a run: its old contents are moved to RUN_DIR.replaced-TIME "
        "(without --resume or --overwrite such a directory is refused)",
    )
    _add_dry_run_arg(train)

    plan = sub.add_parser(
        "plan",
        help="per role: devices asked, parameters, estimated memory; exit 1 if a role cannot fit",
        description="Print what every role of the run asks for (devices), the parameters it holds and its "
        "estimated peak memory on one device (weights, LoRA + optimizer by ZeRO stage, simulated "
        "activations, the judge's KV cache); exit 1 naming each GPU role that does not fit. Then the time "
        "plan: each role's FLOPs per epoch as seconds on --gpu at --mfu, the critical path with and without "
        "max_staleness overlap, busy fractions, edits/s and the best split of the same GPUs (cluster/plan/).",
    )
    plan.add_argument(
        "--gpu-memory", type=float, default=None, metavar="GiB", help="memory of one GPU (default: --gpu's)"
    )
    plan.add_argument(
        "--gpu",
        choices=sorted(GPUS),
        default="h100",
        help="the GPU of the time plan: its dense bf16 peak, bandwidth and memory (cluster/plan/time.py)",
    )
    plan.add_argument("--gpu-tflops", type=float, default=None, help="peak TFLOPS instead of --gpu's")
    plan.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation of the time plan")
    _add_config_args(plan)
    _add_dry_run_arg(plan)

    build = sub.add_parser(
        "build-model",
        help="write an editor with random weights: tiny, or the real model widths at a chosen depth",
        description="Write a diffusers directory of FLUX.1-Kontext-dev / Qwen-Image-Edit(-2509) with random "
        "weights: --dims real has the published widths with --depth transformer blocks (FLUX: that many "
        "dual-stream + single-stream blocks) and 1-layer text encoders, to dry-run a cluster config on a "
        "workstation (policy.model_path=DIR). A real-dims FLUX of depth 1 is ~0.83 B parameters.",
    )
    build.add_argument("--family", required=True, choices=sorted(FAMILIES))
    build.add_argument("--dims", choices=["tiny", "real"], default="real")
    build.add_argument("--depth", type=int, default=None, help="transformer blocks (real: default 1)")
    build.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="saved weights")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", required=True)

    sweep = sub.add_parser(
        "sweep",
        help="a grid of training runs on Ray Tune (settings x seeds) and its report",
        description="Each trial is a full training run with the config, its overrides and one point of the "
        "grid; the same command resumes an interrupted sweep. Writes OUT/report.{md,png,html}.",
    )
    _add_config_args(sweep)
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="one axis of the grid (repeatable); tie keys with '+': learner.lam_pos+learner.lam_neg=0+0,0.8+0.5",
    )
    sweep.add_argument(
        "--seeds", type=int, default=1, help="runs per setting (data/rollout/learner seed 0..N-1)"
    )
    sweep.add_argument("--out", default="runs/sweep", help="sweep folder: Tune state, trial runs, report")
    sweep.add_argument(
        "--max-concurrent", type=int, default=0, help="trials at once (0 = as many as the cluster holds)"
    )

    search = sub.add_parser(
        "search",
        help="a multi-objective search over training settings (Optuna TPE on Ray Tune) and its verdict",
        description="Each trial is a full training run at one setting the sampler chose (same seed for all); "
        "maximizes the final held-out instruction score and keep PSNR together. Writes OUT/report.{md,png,html}, "
        "OUT/search.md (verdict against --reference, confirmation command) and OUT/front.json.",
    )
    _add_config_args(search)
    search.add_argument(
        "--space",
        action="append",
        required=True,
        metavar="KEY=SPEC",
        help="one dimension (repeatable): KEY=log:LO:HI, uniform:LO:HI, int:LO:HI or choice:A,B",
    )
    search.add_argument("--trials", type=int, default=16, help="settings the sampler tries (each one run)")
    search.add_argument("--reference", default=None, metavar="K=V,K=V", help="a setting run once beside it")
    search.add_argument(
        "--start", action="append", metavar="K=V,K=V", help="a known setting tried first (repeatable)"
    )
    search.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    search.add_argument("--startup", type=int, default=5, help="random trials before TPE models the results")
    search.add_argument("--out", default="runs/search", help="search folder: Tune state, trial runs, report")
    search.add_argument("--max-concurrent", type=int, default=1, help="trials at once")

    pre = sub.add_parser(
        "pretrain-tiny", help="pre-train the tiny editor on the synthetic task (CPU, minutes)"
    )
    pre.add_argument("--out", required=True)
    _add_config_args(pre)

    from cocoedit.rewards.serve import SERVICES

    serve = sub.add_parser("serve", help="run one reward service as a standalone gRPC server")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--model", default=None, help="mllm: local model directory")
    _add_config_args(serve)

    edit = sub.add_parser("edit", help="edit one image with the stock diffusers pipeline (+ LoRA)")
    edit.add_argument("--model", required=True)
    edit.add_argument("--lora", default=None, help="LoRA file, or a directory such as RUN_DIR/lora")
    edit.add_argument("--image", required=True)
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--out", required=True)
    edit.add_argument("--steps", type=int, default=None)
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--size", type=int, default=None)

    export = sub.add_parser(
        "export", help="write a checkpoint's LoRA in the diffusers format (pipe.load_lora_weights(DIR))"
    )
    export.add_argument("--checkpoint", required=True, help="RUN_DIR/checkpoints/epoch_NNNNNNNN")
    export.add_argument("--out", required=True, help="directory for pytorch_lora_weights.safetensors")
    export.add_argument(
        "--view", choices=["default", "old"], default="default", help="theta (default) or theta_old (old)"
    )
    export.add_argument(
        "--push-to-hub",
        default=None,
        metavar="OWNER/NAME",
        help="upload DIR (LoRA + model card) as this Hub model repository (huggingface_hub's token, HF_ENDPOINT)",
    )
    export.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")

    ev_parent = sub.add_parser("eval", help="evaluate an editor on GEdit-Bench / ImgEdit-Bench / a manifest")
    ev_sub = ev_parent.add_subparsers(dest="eval_command", required=True)
    ev = ev_sub.add_parser(
        "run", help="generate, score and report (the default: `cocoedit eval --bench ...`)"
    )
    ev.add_argument("--bench", choices=sorted(BENCHMARKS), default="manifest")
    ev.add_argument("--data", required=False)
    ev.add_argument(
        "--lora",
        action="append",
        default=[],
        help="LoRA file, or a directory such as RUN_DIR/lora (as `edit` takes); repeat for one run per LoRA",
    )
    ev.add_argument("--out", default=None, help="run folder (default: RUN_DIR/eval/BENCH); reruns resume")
    ev.add_argument(
        "--edits",
        choices=["policy", "target", "source"],
        default="policy",
        help="policy: sample edits; target/source: score the known targets / the sources (bounds)",
    )
    _add_config_args(ev)
    cmp = ev_sub.add_parser("compare", help="side-by-side group tables of two eval runs with deltas")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--out", default=None, help="HTML file (default: RUN_B/compare_A_vs_B.html)")

    from cocoedit.cluster.rate.commands import add_parser as add_rate_parser

    add_rate_parser(sub)
    from cocoedit.cluster.simulate.run import add_parser as add_simulate_parser

    add_simulate_parser(sub)
    return parser


def _command(args: argparse.Namespace) -> str:
    sub = {
        "data": "data_command",
        "eval": "eval_command",
        "config": "config_command",
        "rate": "rate_command",
    }.get(args.command)
    return f"{args.command} {getattr(args, sub)}" if sub else args.command


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `cocoedit train --help` also prints the resolved config it would run.
    if argv[:1] == ["train"] and ("--help" in argv or "-h" in argv):
        _print_train_help(argv[1:])
        return 0
    # `cocoedit eval --bench ...` is `cocoedit eval run --bench ...`
    if argv[:1] == ["eval"] and argv[1:2] not in (["run"], ["compare"], ["-h"], ["--help"]):
        argv = ["eval", "run", *argv[1:]]
    parser = build_parser()
    # argparse stops collecting positionals after an option: `serve pixel --port 1 key=value` leaves
    # key=value unparsed. Such leftovers are overrides of the commands that take them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [a for a in extra if a.startswith("-") or "=" not in a]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = [*args.overrides, *extra]
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        # `--resume key=value`: the override is not a checkpoint path
        args.overrides, args.resume = [resume, *args.overrides], True
    module_name, func_name, takes_config = COMMANDS[_command(args)]
    # The config first: a bad value fails in well under a second, before torch or Ray is imported.
    # `config show --dry-run` only prints: it names the real-dims editor a dry run builds, never builds it
    build = _command(args) != "config show"
    cfg = (
        _load_config(args.config, args.overrides, getattr(args, "dry_run", False), build)
        if takes_config
        else None
    )
    if takes_config and cfg is None:
        return 1
    if cfg is not None and _command(args) == "train":
        from cocoedit.cluster.config import ConfigError
        from cocoedit.cluster.train.preflight import check_train_inputs

        try:
            check_train_inputs(cfg)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 1
    func: Callable[..., int] = getattr(importlib.import_module(module_name), func_name)
    code = int(func(args) if cfg is None else func(args, cfg) or 0)
    launch = sys.modules.get("cocoedit.cluster.runtime.launch")  # imported only by commands that use Ray
    if launch is not None:
        launch.exit_past_abandoned_join(code)  # a join given up on: leave before Ray's core aborts the exit
    return code


def _load_config(
    path: Optional[str], overrides: Sequence[str], dry_run: bool = False, build: bool = True
) -> Optional[Config]:
    """The resolved config (with the dry-run profile when asked; build=False names the real-dims editor
    without building it), or None after printing why it cannot be loaded."""
    from cocoedit.cluster.config import ConfigError, load_config

    try:
        if dry_run:
            from cocoedit.cluster.train.dryrun import dry_run_config

            return dry_run_config(path, list(overrides), build)
        return load_config(path, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return None


def cli_show_config(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit config show [--explain]`: the resolved config as YAML (with each key's description)."""
    from cocoedit.cluster.config import dump_config
    from cocoedit.cluster.explain import explain

    print(explain(cfg) if getattr(args, "explain", False) else dump_config(cfg), end="")
    model = cfg.policy.model_path
    if (
        getattr(args, "dry_run", False)
        and model is not None
        and not (Path(model) / "model_index.json").exists()
    ):
        print(
            f"# policy.model_path {model}: the real-dims editor of the dry run, not built yet; the first "
            "`cocoedit train --dry-run` (or `plan --dry-run`) builds it there (~3.1 GB, about a minute)",
            file=sys.stderr,
        )
    return 0


def cli_pretrain(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit pretrain-tiny --out DIR`: pre-train the tiny editor with cfg.pretrain."""
    from cocoedit.actors.pretrain import pretrain_tiny, summary

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(summary(pretrain_tiny(cfg.pretrain, args.out, progress=True)))
    return 0


def cli_serve(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit serve pixel|mllm|synthetic`: one reward service as a standalone gRPC server."""
    from cocoedit.loopback import PortTakenError, check_port_free
    from cocoedit.rewards.serve import serve

    try:  # before the scorer loads its model: a taken port is one line, not a server's traceback
        check_port_free(args.host, args.port, "--port")
    except PortTakenError as e:
        print(f"cocoedit serve: {e}", file=sys.stderr)
        return 1
    section = cfg.rewards.service(args.service)
    if args.model is not None:
        if args.service != "mllm":
            print(f"--model applies to the mllm service only, not {args.service}", file=sys.stderr)
            return 2
        section = dataclasses.replace(cfg.rewards.mllm, model_path=args.model)
    return serve(args.service, section, args.host, args.port)


def _print_train_help(rest: list[str]) -> None:
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr, index]  # noqa: SLF001 (argparse keeps subparsers private)
    train_parser.print_help()
    known = [a for a in rest if a not in ("--help", "-h")]
    ns, _ = train_parser.parse_known_args(known)
    print("\nresolved config:\n")
    cfg = _load_config(ns.config, ns.overrides, ns.dry_run, build=False)
    if cfg is not None:
        cli_show_config(ns, cfg)


if __name__ == "__main__":
    sys.exit(main())
