"""`cocoedit sweep`: a grid of full training runs on Ray Tune, then a report over seeds.

    cocoedit sweep --config cluster/configs/tiny_cpu.yaml \
        --grid learner.lam_pos=0,0.02,0.8 --grid rewards.weights.pixel=0.1,0.2 --seeds 3 [--out DIR] [key=value ...]

Every `--grid KEY=V1,V2,...` is one axis of the grid (values are read as YAML, like overrides); several
keys that move together share an axis with `+`: `--grid learner.lam_pos+learner.lam_neg=0+0,0.8+0.5`.
A setting is one point of the grid; each setting runs `--seeds` times (data.seed, rollout.seed and
learner.seed = 0, 1, ...). Trailing `key=value` overrides apply to every trial.

Each trial is one whole training run (cluster/train/loop.py): its learner ranks, rollout workers and reward
service replicas are the trial's resources, one Tune placement group per trial (cluster/runtime/placement.py
`run_bundles`), so trials run side by side on a cluster with room and one after another on a laptop.
Every epoch's metrics go to Tune (`tune.report`); each trial's own run directory
(OUT/runs/<setting>/seed<k>) holds its metrics.jsonl, images and checkpoints.

A failed trial does not stop the others (its error is in the report). An interrupted sweep (Ctrl-C;
a lost driver from Tune's last saved experiment state) resumes when the same command is run again:
finished trials are kept, unfinished ones continue from their last checkpoint (run.checkpoint_every),
failed ones stay failed.
The report (cluster/sweep/report.py) is written to OUT/report.{md,png,html} when the trials end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cocoedit.cluster.config import Config, ConfigError, load_config
from cocoedit.cluster.sweep.report import PSNR, TrialOutcome

log = logging.getLogger(__name__)

# A sweep seed k sets every seed a run draws from: sampler order and noise, LoRA init, learner noise.
SEED_KEYS = ("data.seed", "rollout.seed", "learner.seed")
SET_BY_SWEEP = (*SEED_KEYS, "run.run_dir", "run.name")  # per trial, from --seeds and --out
SWEEP_FILE = "sweep.json"  # the sweep's definition, next to Tune's experiment state


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its overrides (`key=value`, YAML values) and a name made of them."""

    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return " ".join(self.overrides) or "base"

    @property
    def slug(self) -> str:
        """A file-system-safe name: `learner.lam_pos=0.02,rewards.weights.pixel=0.1`."""
        return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(self.overrides) or "base")


def parse_axis(spec: str) -> list[tuple[str, ...]]:
    """`k1+k2=a1+a2,b1+b2` -> [("k1=a1", "k2=a2"), ("k1=b1", "k2=b2")] (one axis of the grid)."""
    keys_part, sep, values_part = spec.partition("=")
    keys = [k.strip() for k in keys_part.split("+")]
    if not sep or not all(keys) or not values_part.strip():
        raise ValueError(
            f"--grid {spec!r} must look like KEY=V1,V2 (e.g. learner.lam_pos=0,0.02,0.8), or "
            f"KEY1+KEY2=A1+A2,B1+B2 for keys that move together"
        )
    points = []
    for value in values_part.split(","):
        parts = [v.strip() for v in value.split("+")] if len(keys) > 1 else [value.strip()]
        if len(parts) != len(keys) or not all(parts):
            raise ValueError(
                f"--grid {spec!r}: value {value!r} must give {len(keys)} '+'-separated values, one per key "
                f"({'+'.join(keys)})"
            )
        points.append(tuple(f"{k}={v}" for k, v in zip(keys, parts, strict=True)))
    if len(set(points)) != len(points):
        raise ValueError(f"--grid {spec!r} repeats a value")
    return points


def grid_settings(specs: Sequence[str]) -> list[Setting]:
    """The settings of the grid: the product of every `--grid` axis, in command-line order."""
    axes = [parse_axis(s) for s in specs]
    keys = [o.partition("=")[0] for axis in axes for o in axis[0]]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"--grid names {repeated} on more than one axis; give each key one --grid")
    ours = [k for k in keys if k in SET_BY_SWEEP]
    if ours:
        raise ValueError(
            f"--grid {ours}: the sweep sets {list(SET_BY_SWEEP)} for every trial (seeds 0..N-1 from --seeds, "
            f"run directories under --out); vary the seeds with --seeds"
        )
    return [Setting(tuple(o for point in combo for o in point)) for combo in itertools.product(*axes)]


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: a setting at one seed."""

    setting: Setting
    seed: int

    @property
    def key(self) -> str:
        return f"{self.setting.slug}/seed{self.seed}"


def trial_overrides(base: Sequence[str], trial: Trial, out: Path) -> list[str]:
    """Every override of a trial's run: the sweep's, the setting's, its seeds, its run directory."""
    return [
        *base,
        *trial.setting.overrides,
        *(f"{k}={trial.seed}" for k in SEED_KEYS),
        f"run.run_dir={(out / 'runs' / trial.key).resolve()}",
        f"run.name={trial.setting.slug}-seed{trial.seed}",
    ]


@dataclass(frozen=True)
class Sweep:
    """What `cocoedit sweep` runs; saved as OUT/sweep.json so a resumed sweep runs the same grid."""

    config: Optional[str]
    overrides: tuple[str, ...]
    settings: tuple[Setting, ...]
    seeds: int
    out: Path
    # Where the command ran: trials run there (Tune starts them in trial folders), so a relative --config
    # or path override means what it means to `cocoedit train` run from the same place.
    workdir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds} must be >= 1 (the runs per setting)")
        if self.config is not None:
            object.__setattr__(self, "config", str((self.workdir / self.config).resolve()))

    @property
    def trials(self) -> list[Trial]:
        return [Trial(s, k) for s in self.settings for k in range(self.seeds)]

    def trial_config(self, trial: Trial) -> Config:
        return load_config(self.config, trial_overrides(self.overrides, trial, self.out))

    def trial_configs(self) -> dict[str, Config]:
        """Every trial's config by Trial.key, all loaded and checked: a bad grid value fails here, naming
        its setting, before Ray starts."""
        configs = {}
        for trial in self.trials:
            try:
                configs[trial.key] = self.trial_config(trial)
            except ConfigError as e:
                raise ConfigError(f"--grid setting {trial.setting.name!r}: {e}") from e
            if configs[trial.key].run.pin_cpus:
                raise ValueError(
                    "run.pin_cpus pins to this machine's cores, which trials side by side would share: "
                    "set run.pin_cpus=false for a sweep"
                )
        return configs

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "overrides": list(self.overrides),
            "settings": [list(s.overrides) for s in self.settings],
            "seeds": self.seeds,
        }


def check_resumable(sweep: Sweep) -> None:
    """Refuse to resume OUT with a different grid, config or seeds than it was started with."""
    saved = sweep.out / SWEEP_FILE
    if not saved.exists():
        return
    before = json.loads(saved.read_text())
    if before != sweep.to_json():
        raise ValueError(
            f"{sweep.out} holds a sweep started with {before}, not {sweep.to_json()}: run the same command "
            f"to resume it, or give a new --out"
        )


def run_trial(params: dict[str, Any], sweep: Sweep) -> None:
    """Tune's trainable: one training run, every epoch's metrics reported to Tune.

    A trial restarted after an interruption continues from its run's latest checkpoint; Tune restarts
    it afresh, so the epochs logged before the interruption are reported to it again first."""
    from ray import tune

    from cocoedit.cluster.train.evaluation import write_summary
    from cocoedit.cluster.train.loop import run_epochs, start_run
    from cocoedit.learner.checkpoint import latest_checkpoint

    trial = next(t for t in sweep.trials if t.key == params["trial"])
    if sweep.workdir.is_dir():  # a node of a cluster without it keeps Tune's folder
        os.chdir(sweep.workdir)
    cfg = sweep.trial_config(trial)
    run_dir = Path(cfg.run.run_dir)
    resume = latest_checkpoint(run_dir) is not None
    if not resume:  # interrupted before its first checkpoint: every epoch is run again, logged once
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    logged = _logged_rows(run_dir)
    for row in logged:
        tune.report(row)
    if logged and logged[-1].get("epoch") == cfg.run.epochs - 1:  # interrupted after its last epoch
        return
    with start_run(cfg, resume=resume) as run:
        for epoch, row in run_epochs(run):
            tune.report({"epoch": epoch, **row})
    write_summary(run_dir)  # eval/summary.json: the trial's changes, paired per item, as `cocoedit train`


def _logged_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch's metrics in the run's metrics.jsonl (cluster/train/runlog.py), nulls left out."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if v is not None} for line in lines]


def trial_resources(cfg: Config) -> Any:
    """The trial's placement group: an empty head (the driver loop takes no CPU, as in `cocoedit
    train`), then the bundles of the run's learner ranks, rollout workers and reward replicas."""
    from ray import tune

    from cocoedit.cluster.runtime.placement import run_bundles

    return tune.PlacementGroupFactory([{}, *run_bundles(cfg)], strategy="PACK")


def run_sweep(sweep: Sweep, cfg: Config, max_concurrent: int = 0) -> Any:
    """Run (or resume) every trial of `sweep` on Ray Tune; returns Tune's ResultGrid.

    `cfg.run` starts (or joins) the Ray cluster. Every trial's config is loaded first, so a bad grid
    value fails at once, and the tiny models are built once here, before any trial starts."""
    from ray import tune

    from cocoedit.cluster.runtime.launch import init_ray, resolve_models

    configs = sweep.trial_configs()
    check_resumable(sweep)
    init_ray(cfg.run)
    for trial_cfg in configs.values():  # tiny models: built once here, cached for every trial
        resolve_models(trial_cfg)
    sweep.out.mkdir(parents=True, exist_ok=True)
    (sweep.out / SWEEP_FILE).write_text(json.dumps(sweep.to_json(), indent=2))

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep),
        lambda params: trial_resources(configs[params["trial"]]),
    )
    storage = str(sweep.out.resolve())
    experiment = sweep.out.resolve() / "tune"
    if tune.Tuner.can_restore(experiment):
        log.info("resuming the sweep in %s", experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.key for t in sweep.trials])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                verbose=1,
            ),
        )
    return tuner.fit()


def outcomes(sweep: Sweep, results: Any) -> list[TrialOutcome]:
    """Every trial's last reported metrics and error, from Tune's ResultGrid (trials in sweep order)."""
    by_key = {r.config["trial"]: r for r in results if r.config}  # a trial never started has no config
    out = []
    for trial in sweep.trials:
        result = by_key.get(trial.key)
        metrics = dict(result.metrics or {}) if result is not None else {}
        error = _error_text(result.error) if result is not None and result.error is not None else None
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        cfg = sweep.trial_config(trial)
        finished = error is None and numeric.get("epoch") == cfg.run.epochs - 1
        first = first_evaluation(_logged_rows(Path(cfg.run.run_dir)))
        out.append(TrialOutcome(trial.key, trial.setting.name, trial.seed, numeric, error, finished, first))
    return out


def first_evaluation(rows: list[dict[str, Any]]) -> dict[str, float]:
    """A trial's first evaluation, named `eval/...`: the starting policy's (`eval_start/...` in the first
    row, cluster/train/evaluation.py), or in runs without it the first row that evaluated."""
    numeric = {k: float(v) for k, v in (rows[0] if rows else {}).items() if isinstance(v, (int, float))}
    start = {
        k.replace("eval_start/", "eval/", 1): v for k, v in numeric.items() if k.startswith("eval_start/")
    }
    if start:
        return start
    evals = [row for row in rows if PSNR in row]
    return {k: float(v) for k, v in evals[0].items() if isinstance(v, (int, float))} if evals else {}


def _error_text(error: BaseException) -> str:
    """`Type: message` of the exception the trial raised (a RayTaskError carries it as its cause)."""
    cause = getattr(error, "cause", None)
    e = cause if isinstance(cause, BaseException) else error
    return f"{type(e).__name__}: {e}"


def cli_sweep(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit sweep --config FILE --grid KEY=V1,V2 [--grid ...] --seeds N [--out DIR] [key=value ...]`.

    `cfg` (the config with the sweep-wide overrides) starts or joins the Ray cluster. Exits 1 before Ray
    starts on a bad grid, seed count or value, and 1 after the report when trials are left unfinished."""
    from cocoedit.cluster.runtime.launch import RayConnectError
    from cocoedit.cluster.sweep.report import write_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.max_concurrent < 0:
            raise ValueError(f"--max-concurrent {args.max_concurrent} must be >= 0 (0 = as many as fit)")
        sweep = Sweep(
            args.config, tuple(args.overrides), tuple(grid_settings(args.grid)), args.seeds, Path(args.out)
        )
        results = run_sweep(sweep, cfg, args.max_concurrent)
    except (ValueError, ConfigError, RayConnectError) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    trials = outcomes(sweep, results)
    report = write_report(
        sweep.out, [s.name for s in sweep.settings], trials, command=" ".join(["cocoedit", *sys.argv[1:]])
    )
    print(report.text)
    print(f"report: {report.markdown} {report.png} {report.html}")
    failed = [t.key for t in trials if t.status == "failed"]
    if failed:
        print(
            f"{len(failed)} of {len(trials)} trials failed: {failed} (errors in the report)", file=sys.stderr
        )
    unfinished = [t.key for t in trials if t.status == "unfinished"]
    if unfinished:
        print(f"trials unfinished: {unfinished}; run the same command again to resume them", file=sys.stderr)
    return 1 if unfinished else 0
