"""The experiment config: one frozen dataclass per component, composed here, loaded from one YAML.

    cfg = load_config("cluster/configs/tiny_cpu.yaml", ["learner.lr=1e-4", "rollout.num_steps=8"])

Unknown keys and values of the wrong type are errors that name the key and the file. The rest of the
code sees only these dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml

from cocoedit.actors.config import DataConfig, PolicyConfig, PretrainConfig, RolloutConfig
from cocoedit.cluster.eval_config import EvalConfig
from cocoedit.learner.config import LearnerConfig
from cocoedit.ranges import Range
from cocoedit.rewards.config import RewardsConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny_cpu.yaml"


@dataclass(frozen=True)
class RunConfig:
    """The driver: epochs, logging, checkpoints, the Ray cluster."""

    name: str = "cocoedit"
    epochs: int = 100
    run_dir: str = "runs/${name}"  # ${name} is replaced by run.name
    log_every: int = 1
    image_every: int = 10
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    # Every eval_every epochs (and at the last) the current sampling policy edits a FIXED set (the first
    # eval_items items x eval_seeds noise seeds) and the reward services score it: a learning curve free
    # of the noise of which items an epoch happened to draw. 0 = never.
    eval_every: int = 0
    eval_items: int = 8
    eval_seeds: int = 2
    ray_address: Optional[str] = None  # None = the job's cluster under `ray job submit`, else a local one
    # Port of the local cluster's Prometheus metrics export (cocoedit/telemetry.py), on 127.0.0.1.
    # None = Ray picks one (logged at start); ignored when joining a cluster (`ray start --metrics-export-port`).
    metrics_export_port: Optional[int] = None
    ray_num_cpus: Optional[int] = None
    # Placement (cluster/placement.py): every role's actors are reserved as placement groups before
    # anything starts; a reservation the cluster cannot satisfy fails after this many seconds.
    placement_timeout_s: float = 30.0
    # Compare what the roles ask for with the cluster's resources first (fails at once, naming the role);
    # false on autoscaling clusters where nodes join on demand.
    check_resources: bool = True
    # Rollout worker i and learner rank i share one bundle (one GPU: gpus_per_worker + gpus_per_rank <= 1).
    colocate: bool = False
    seed: int = 0
    tiny: bool = False  # build the tiny editor / tiny judge in code when no model_path is given
    # Experiment trackers (cluster/runlog.py): each gets the same scalars, image grids, the resolved
    # config as parameters and the LoRA at the end. W&B stays offline (files under run_dir/wandb, no
    # network) unless wandb_mode=online; MLflow writes a file store under run_dir/mlruns unless a
    # tracking URI is given.
    trackers: tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = ("tensorboard",)
    wandb_project: str = "cocoedit"
    wandb_mode: Literal["offline", "online"] = "offline"
    mlflow_tracking_uri: Optional[str] = None
    mlflow_experiment: str = "cocoedit"
    # Joining a cluster (run.ray_address / RAY_ADDRESS) gives up after this long with a message
    # instead of waiting on the address of a stopped cluster.
    ray_connect_timeout_s: Annotated[float, Range(gt=0)] = 30.0
    # Pin learner ranks and rollout workers to disjoint cores of this machine (one-node clusters, not
    # with colocate), so that sampling the next batch overlaps the update instead of competing for the
    # same cores (bench/train_loop.py measures both).
    pin_cpus: bool = False


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def load_config(path: Union[str, Path, None] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read YAML `path` (default: tiny_cpu.yaml), apply `key.sub=value` overrides, return a Config."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist (configs shipped: {sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))})"
        )
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. learner.lr=1e-4)")
        _set_dotted(raw, key.strip().split("."), yaml.safe_load(value) if value.strip() else "")
    source = f"{path}" + (f" with overrides {list(overrides)}" if overrides else "")
    cfg = _build(Config, raw, prefix="", source=source)
    return _resolve(cfg)


def to_dict(cfg: Any) -> dict:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _set_dotted(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _resolve(cfg: Config) -> Config:
    run_dir = cfg.run.run_dir.replace("${name}", cfg.run.name)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=run_dir))


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; valid keys of {where}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(a, value, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            fail(f"one of {list(args)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"a list of {len(args)} items")
        return tuple(
            _coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return {
            _coerce(args[0], k, f"{key}.<key>", source): _coerce(args[1], v, f"{key}.{k}", source)
            for k, v in value.items()
        }
    raise ConfigError(f"{source}: {key}: unsupported config type {tp!r}")
