"""`cocoedit search`: a multi-objective search over training settings (Optuna's TPE through Ray Tune).

    cocoedit search --config cluster/configs/tiny_cpu.yaml --out runs/search --trials 16 \
        --space learner.lam_pos=log:0.03:3 --space learner.reg_pos_target=choice:sample,source \
        --reference learner.lam_pos=0,learner.lam_neg=0 [--start KEY=V,KEY=V ...] [key=value ...]

Where `cocoedit sweep` runs a grid, this lets a sampler choose the next setting from the results so far:
Optuna's multi-objective TPE sampler (`optuna.samplers.TPESampler`, seeded by `--seed`) maximizes the
final held-out instruction score and keep-region PSNR together, so what it converges on is the Pareto
front of the two. Every `--space KEY=SPEC` is one dimension:

    log:LO:HI        a float, log-uniform in [LO, HI]        learner.lam_pos=log:0.03:3
    uniform:LO:HI    a float, uniform in [LO, HI]            learner.ring_weight=uniform:0:1
    int:LO:HI        an integer in [LO, HI], both included   learner.erode_radius=int:0:2
    choice:A,B,...   one of the values (read as YAML)        learner.reg_pos_target=choice:sample,source

Each trial is one training run (cluster/sweep/tune.py's machinery: its own run directory
OUT/runs/<setting>/seed<k>, its resources as one placement group) at the same seed `--run-seed` (all
trials share sampler order, noise and LoRA start, so two settings differ by their setting, not their
luck). `--start` settings are run first (known points, e.g. the paper's lambdas); then `--startup`
random trials; then TPE. `--reference` is run once beside the search (e.g. no regularizer): the
verdict says which searched settings dominate it by `--margin` (keep PSNR at least +0.5 dB higher at an
instruction score at most 0.01 lower, by default). One seed per trial cannot separate small effects:
confirm a front with `cocoedit sweep` at several seeds on items the search never saw, the command the
report prints (on the synthetic task the search's `data.synth_seed` + 1; with a data file, one the user
names that holds other items).

OUT/report.{md,png,html} is the sweep report over every setting; OUT/search.md adds the verdict and the
confirmation command; OUT/front.json the front's settings. The same command resumes an interrupted search.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cocoedit.cluster.config import Config, ConfigError, load_config
from cocoedit.cluster.sweep.report import PSNR, TrialOutcome, instruction_key, pareto_front
from cocoedit.cluster.sweep.tune import (
    SET_BY_SWEEP,
    Setting,
    Trial,
    _error_text,
    _logged_rows,
    first_evaluation,
    trial_overrides,
    trial_resources,
)

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"  # the search's definition, so a resumed search is the same search
KINDS = ("log", "uniform", "int", "choice")
REFERENCE = "reference"  # the Tune experiment of the reference run


@dataclass(frozen=True)
class Dimension:
    """One `--space KEY=KIND:ARGS` dimension of the search."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def domain(self) -> Any:
        from ray import tune

        if self.kind == "log":
            return tune.loguniform(*self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "int":
            return tune.randint(self.args[0], self.args[1] + 1)  # randint's upper bound is exclusive
        return tune.choice(list(self.args))

    @property
    def spec(self) -> str:
        return f"{self.key}={self.kind}:" + (",".join if self.kind == "choice" else ":".join)(
            str(a) for a in self.args
        )


def parse_dimension(spec: str) -> Dimension:
    """`learner.lam_pos=log:0.03:3` -> Dimension("learner.lam_pos", "log", (0.03, 3.0))."""
    key, sep, rest = spec.partition("=")
    kind, _, args = rest.partition(":")
    usage = (
        f"--space {spec!r} must look like KEY=log:LO:HI, KEY=uniform:LO:HI, KEY=int:LO:HI or "
        f"KEY=choice:A,B (e.g. learner.lam_pos=log:0.03:3)"
    )
    if not sep or not key.strip() or kind not in KINDS or not args:
        raise ValueError(usage)
    key = key.strip()
    if key in SET_BY_SWEEP:
        raise ValueError(f"--space {key}: the search sets {list(SET_BY_SWEEP)} for every trial")
    if kind == "choice":
        values = tuple(yaml.safe_load(v) for v in args.split(","))
        if len(values) < 2 or len(set(map(str, values))) != len(values):
            raise ValueError(f"--space {spec!r}: a choice needs two or more different values")
        return Dimension(key, kind, values)
    try:
        lo, hi = (int(a) if kind == "int" else float(a) for a in args.split(":"))
    except ValueError:
        raise ValueError(usage) from None
    if not lo < hi or (kind == "log" and lo <= 0):
        raise ValueError(
            f"--space {spec!r}: needs LO < HI{' and LO > 0 (log scale)' if kind == 'log' else ''}"
        )
    return Dimension(key, kind, (lo, hi))


def value_text(value: Any) -> str:
    """A sampled value as an override's value: floats to 3 significant digits (what the run uses)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def parse_setting(text: str) -> tuple[str, ...]:
    """`k1=v1,k2=v2` (or space-separated) -> ("k1=v1", "k2=v2")."""
    parts = tuple(p for p in text.replace(",", " ").split() if p)
    bad = [p for p in parts if "=" not in p]
    if bad or not parts:
        raise ValueError(
            f"setting {text!r} must be KEY=VALUE pairs separated by commas, e.g. learner.lam_pos=0"
        )
    return parts


@dataclass(frozen=True)
class Search:
    """What `cocoedit search` runs; saved as OUT/search.json so a resumed search runs the same search."""

    config: Optional[str]
    overrides: tuple[str, ...]
    dimensions: tuple[Dimension, ...]
    trials: int
    out: Path
    reference: tuple[str, ...] = ()
    starts: tuple[tuple[str, ...], ...] = ()
    seed: int = 0  # the sampler's
    startup: int = 5  # random trials before TPE models the results
    run_seed: int = 0  # data/rollout/learner seed of every trial
    margin: tuple[float, float] = (0.5, 0.01)  # dominance: keep PSNR >= ref + a, instruction >= ref - b
    workdir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--trials {self.trials} must be >= 1")
        if not self.dimensions:
            raise ValueError("give at least one --space KEY=SPEC")
        keys = [d.key for d in self.dimensions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"--space names a key twice: {keys}")
        for start in self.starts:
            unknown = [o.partition("=")[0] for o in start if o.partition("=")[0] not in keys]
            if unknown:
                raise ValueError(f"--start {','.join(start)}: {unknown} is not a --space key ({keys})")
        if self.config is not None:
            object.__setattr__(self, "config", str((self.workdir / self.config).resolve()))

    def setting(self, params: dict[str, Any]) -> Setting:
        return Setting(tuple(f"{d.key}={value_text(params[d.key])}" for d in self.dimensions))

    def trial_config(self, setting: Setting) -> Config:
        return load_config(
            self.config, trial_overrides(self.overrides, Trial(setting, self.run_seed), self.out)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "overrides": list(self.overrides),
            "space": [d.spec for d in self.dimensions],
            "trials": self.trials,
            "reference": list(self.reference),
            "starts": [list(s) for s in self.starts],
            "seed": self.seed,
            "startup": self.startup,
            "run_seed": self.run_seed,
        }

    def check(self) -> Config:
        """Load every known setting's config (bad keys and values fail here, before Ray starts) and refuse to
        resume OUT with a different search; returns the reference's (or the first start's) config."""
        saved = self.out / SEARCH_FILE
        if saved.exists() and json.loads(saved.read_text()) != self.to_json():
            raise ValueError(
                f"{self.out} holds a search started as {json.loads(saved.read_text())}: run the same "
                f"command to resume it, or give a new --out"
            )
        known = [Setting(self.reference)] if self.reference else []
        known += [Setting(s) for s in self.starts]
        # the space's corners: its lower ends, then its upper ends (a choice's first and last value)
        for end in (0, -1):
            known.append(Setting(tuple(f"{d.key}={value_text(d.args[end])}" for d in self.dimensions)))
        configs = []
        for setting in known:
            try:
                configs.append(self.trial_config(setting))
            except ConfigError as e:
                raise ConfigError(f"search setting {setting.name!r}: {e}") from e
        if not configs[0].run.eval_every:
            raise ValueError(
                "a search is told each trial's final evaluation: set run.eval_every (e.g. to run.epochs)"
            )
        if configs[0].run.pin_cpus:
            raise ValueError("run.pin_cpus pins to this machine's cores: set run.pin_cpus=false for a search")
        return configs[0]


def search_trial(params: dict[str, Any], search: Search) -> None:
    """Tune's trainable: one training run at the setting `params` gives (or the reference). The rows that
    evaluated are reported to Tune (every epoch is in the run's metrics.jsonl); the last one, the final
    evaluation, is what the sampler is told."""
    from ray import tune

    from cocoedit.cluster.train.evaluation import write_summary
    from cocoedit.cluster.train.loop import run_epochs, start_run
    from cocoedit.learner.checkpoint import latest_checkpoint

    if search.workdir.is_dir():
        os.chdir(search.workdir)
    setting = Setting(search.reference) if params.get(REFERENCE) else search.setting(params)
    cfg = search.trial_config(setting)
    run_dir = Path(cfg.run.run_dir)
    resume = latest_checkpoint(run_dir) is not None
    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    def report(row: dict[str, Any]) -> None:  # the evaluations only: each carries what the sampler is told
        if PSNR in row:
            tune.report({**row, "setting": setting.name})

    logged = _logged_rows(run_dir)
    for row in logged:
        report(row)
    if logged and logged[-1].get("epoch") == cfg.run.epochs - 1:
        return
    with start_run(cfg, resume=resume) as run:
        for epoch, row in run_epochs(run):
            report({"epoch": epoch, **row})
    write_summary(run_dir)


def _tuner(search: Search, name: str, param_space: dict[str, Any], tune_config: Any, resources: Any) -> Any:
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(search_trial, search=search), resources)
    experiment = search.out.resolve() / name
    if tune.Tuner.can_restore(experiment):
        log.info("resuming %s", experiment)
        return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(search.out.resolve()),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=1,
        ),
    )


def run_search(search: Search, cfg: Config, max_concurrent: int = 1) -> list[Any]:
    """The reference run (if any), then the search; returns their Tune results, reference first."""
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from cocoedit.cluster.runtime.launch import init_ray, resolve_models

    first = search.check()
    init_ray(cfg.run)
    resolve_models(first)  # the tiny models, built once before any trial
    search.out.mkdir(parents=True, exist_ok=True)
    (search.out / SEARCH_FILE).write_text(json.dumps(search.to_json(), indent=2))
    resources = trial_resources(first)  # every trial asks for the same: the space moves no resources
    results = []
    if search.reference:
        results += list(_tuner(search, REFERENCE, {REFERENCE: True}, tune.TuneConfig(), resources).fit())
    ikey = "eval/mllm" if "mllm" in first.rewards.weights else "eval/synthetic"
    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup)
    starts = [{o.partition("=")[0]: yaml.safe_load(o.partition("=")[2]) for o in s} for s in search.starts]
    searcher = OptunaSearch(
        metric=[ikey, PSNR], mode=["max", "max"], sampler=sampler, points_to_evaluate=starts or None
    )
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=max(1, max_concurrent)),
        num_samples=search.trials,
    )
    space = {d.key: d.domain() for d in search.dimensions}
    found = list(_tuner(search, "tune", space, tune_config, resources).fit())
    return results + sorted(found, key=_trial_number)


def _trial_number(result: Any) -> int:
    """The order Tune started a trial in (`search_trial_<id>_<n>_...`): a restored experiment's results
    come back in another order."""
    match = re.search(r"search_trial_[0-9a-f]+_(\d+)_", str(result.path))
    return int(match.group(1)) if match else sys.maxsize


def outcomes(search: Search, results: Sequence[Any]) -> tuple[list[str], list[TrialOutcome]]:
    """The settings (reference first, then in the order they were tried) and each trial's outcome."""
    settings: list[str] = []
    out = []
    for result in results:
        if not result.config:
            continue
        params = result.config
        setting = Setting(search.reference) if params.get(REFERENCE) else search.setting(params)
        cfg = search.trial_config(setting)
        metrics = dict(result.metrics or {})
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        error = _error_text(result.error) if result.error is not None else None
        finished = error is None and numeric.get("epoch") == cfg.run.epochs - 1
        first = first_evaluation(_logged_rows(Path(cfg.run.run_dir)))
        key = Trial(setting, search.run_seed).key
        if setting.name not in settings:
            settings.append(setting.name)
        out.append(TrialOutcome(key, setting.name, search.run_seed, numeric, error, finished, first))
    return settings, out


def dominates(point: tuple[float, float], ref: tuple[float, float], margin: tuple[float, float]) -> bool:
    """(instruction, keep PSNR) `point` dominates `ref` by `margin`: PSNR >= ref + a, instruction >= ref - b."""
    return point[1] >= ref[1] + margin[0] and point[0] >= ref[0] - margin[1]


def shortfall(point: tuple[float, float], ref: tuple[float, float], margin: tuple[float, float]) -> float:
    """How far `point` is from dominating `ref`, in units of each margin (<= 0: it dominates)."""
    return max((ref[1] + margin[0] - point[1]) / margin[0], (ref[0] - margin[1] - point[0]) / margin[1])


def config_value(cfg: Config, key: str) -> Any:
    """The value of a dotted override key in a loaded config (`learner.tau_pos` -> cfg.learner.tau_pos)."""
    value: Any = cfg
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def unseen_items(cfg: Config) -> tuple[str, str]:
    """The override that gives a confirmation items a search on `cfg` never saw, and what it needs:
    the synthetic task's next seed (other training and held-out items), or for a data file one the
    user names (no override can draw unseen items from the same file)."""
    if cfg.data.manifest is None:
        return f"data.synth_seed={cfg.data.synth_seed + 1}", ""
    return "data.manifest=UNSEEN", (
        f" (UNSEEN: a data file of items not in {cfg.data.manifest}, the search's; same format)"
    )


def verdict(search: Search, settings: Sequence[str], trials: Sequence[TrialOutcome]) -> tuple[str, list[str]]:
    """OUT/search.md's text and the front's settings: each finished setting's final (instruction, keep
    PSNR), the Pareto front, which settings dominate the reference, and the confirmation command."""
    ikey = instruction_key(trials)
    done = {o.setting: o for o in trials if o.status == "done" and PSNR in o.metrics}
    names = [s for s in settings if s in done]
    points = [(done[s].metrics.get(ikey, math.nan), done[s].metrics[PSNR]) for s in names]
    front = pareto_front(points)
    ref_name = Setting(search.reference).name if search.reference else None
    ref = points[names.index(ref_name)] if ref_name in names else None
    a, b = search.margin
    lines = [
        f"# Search: {len(trials)} trials, {len(done)} finished (seed {search.run_seed}, sampler seed {search.seed})",
        "",
        f"Objectives: final held-out `{ikey}` and `{PSNR}`, both maximized (Optuna multi-objective TPE, "
        f"{search.startup} random trials first). Space: "
        + ", ".join(f"`{d.spec}`" for d in search.dimensions),
        "",
        f"| setting | {ikey} | keep PSNR (dB) | front | dominates the reference |",
        "|---|---|---|---|---|",
    ]
    for i, (name, (x, y)) in enumerate(zip(names, points, strict=True)):
        mark = (
            "reference" if name == ref_name else ("yes" if ref and dominates((x, y), ref, (a, b)) else "no")
        )
        lines.append(
            f"| {name} | {x:.4f} | {y:.2f} | {'yes' if i in front else ''} | {mark if ref else '-'} |"
        )
    winners = [
        n for n, p in zip(names, points, strict=True) if ref and n != ref_name and dominates(p, ref, (a, b))
    ]
    front_names = [names[i] for i in sorted(front) if names[i] != ref_name]
    lines += [
        "",
        f"Dominance: keep PSNR at least +{a} dB above the reference at an instruction score at most {b} below.",
    ]
    if ref is None:
        lines.append("No reference run finished: no verdict.")
    elif winners:
        lines.append(
            f"{len(winners)} setting(s) dominate the reference on this one seed: confirm them below."
        )
    else:
        lines.append("No searched setting dominates the reference.")
    # the front's settings nearest to dominating the reference (all of the front when none is given)
    by_name = dict(zip(names, points, strict=True))
    nearest = sorted(front_names, key=lambda n: shortfall(by_name[n], ref, (a, b)) if ref else 0.0)
    confirm = [*nearest[:3], *([ref_name] if ref_name else [])]
    if confirm:
        keys = sorted({o.partition("=")[0] for s in confirm for o in s.split()})
        values = [dict(o.partition("=")[::2] for o in s.split()) for s in confirm]
        for setting, v in zip(confirm, values, strict=True):  # a key a setting leaves out: its config's value
            cfg = search.trial_config(Setting(tuple(setting.split())))
            v.update({k: value_text(config_value(cfg, k)) for k in keys if k not in v})
        grid = "+".join(keys) + "=" + ",".join("+".join(v[k] for k in keys) for v in values)
        unseen, how = unseen_items(search.trial_config(Setting(())))
        lines += [
            "",
            f"Confirm the {len(confirm) - bool(ref_name)} setting(s) of the front nearest to dominating the "
            f"reference, and the reference, at three seeds on items the search never saw{how}:",
            "",
            f"    cocoedit sweep --config {search.config} --seeds 3 --out {search.out}-confirm "
            f"--grid '{grid}' {' '.join(search.overrides)} {unseen}",
        ]
    return "\n".join(lines) + "\n", front_names


def cli_search(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit search --config FILE --space KEY=SPEC [...] --trials N [--reference K=V,...] [--start ...]`.

    Exits 1 before Ray starts on a bad space, setting or value, and 1 after the report when trials failed."""
    from cocoedit.cluster.runtime.launch import RayConnectError
    from cocoedit.cluster.sweep.report import write_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        search = Search(
            args.config,
            tuple(args.overrides),
            tuple(parse_dimension(s) for s in args.space),
            args.trials,
            Path(args.out),
            reference=parse_setting(args.reference) if args.reference else (),
            starts=tuple(parse_setting(s) for s in args.start or ()),
            seed=args.seed,
            startup=args.startup,
        )
        results = run_search(search, cfg, args.max_concurrent)
    except (ValueError, ConfigError, RayConnectError) as e:
        print(f"search: {e}", file=sys.stderr)
        return 1
    settings, trials = outcomes(search, results)
    report = write_report(search.out, settings, trials, command=" ".join(["cocoedit", *sys.argv[1:]]))
    text, front = verdict(search, settings, trials)
    (search.out / "search.md").write_text(text)
    (search.out / "front.json").write_text(json.dumps(front, indent=2))
    print(report.text)
    print(text)
    print(f"report: {report.markdown} {report.png} {report.html} {search.out / 'search.md'}")
    failed = [t.key for t in trials if t.status != "done"]
    if failed:
        print(f"{len(failed)} of {len(trials)} trials did not finish: {failed}", file=sys.stderr)
    return 1 if failed else 0
