"""The experiment config: one frozen dataclass per component, composed here, loaded from one YAML.

    cfg = load_config("cluster/configs/tiny_cpu.yaml", ["learner.lr=1e-4", "rollout.num_steps=12"])

Unknown keys, values of the wrong type and values outside a field's declared range (`Annotated[...,
Range(...)]`, cocoedit/ranges.py) are errors that name the key, the value and the file; so are broken
rules between fields, which a section states in its `check()` method. All of it happens here, before
Ray or any model starts. The rest of the code sees only these dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from cocoedit.actors.config import DataConfig, PolicyConfig, PretrainConfig, RolloutConfig
from cocoedit.actors.policies import FAMILIES
from cocoedit.cluster.curate.config import CurateConfig
from cocoedit.cluster.eval.config import EvalConfig
from cocoedit.cluster.redact import redact_text, redact_tree
from cocoedit.cluster.train.config import RunConfig
from cocoedit.learner.config import LearnerConfig
from cocoedit.ranges import Range, check
from cocoedit.rewards.config import (
    ClientConfig,
    JudgeConfig,
    PixelConfig,
    ServiceConfig,
    SyntheticJudgeConfig,
    check_tls_named,
)
from cocoedit.rewards.serve import SERVICES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# libyaml's safe loader where installed: the same documents, parsed ~10x faster than pure Python
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_CONFIG = CONFIG_DIR / "tiny_cpu.yaml"


_S = TypeVar("_S", bound=ServiceConfig)


def _default_sections() -> dict[str, ServiceConfig]:
    return {name: s.config() for name, s in SERVICES.items()}


@dataclass(frozen=True)
class RewardsConfig:
    """The reward side: R = sum_k weights[k] S_k, the services computing the S_k, and their client.

    Every service registered in cocoedit.rewards.serve.SERVICES has its section `rewards.<name>` in the
    YAML, read as `cfg.rewards.service("name")`; the shipped ones also as typed properties
    (`cfg.rewards.pixel`, `.mllm`, `.synthetic`).
    """

    # R = sum_k weights[k] * S_k; names are services' score names (registered, or given an address).
    weights: dict[str, Annotated[float, Range(ge=0)]] = field(
        default_factory=lambda: {"mllm": 0.9, "pixel": 0.1}
    )
    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # external services by name
    client: ClientConfig = field(default_factory=ClientConfig)
    # An edit a service could not score (per-edit error) is dropped from the epoch's batch; more than
    # this fraction of an epoch's edits dropped fails the epoch (a broken service is not trained around).
    max_dropped_fraction: Annotated[float, Range(ge=0, le=1)] = 0.1
    # Likewise for edits scored with a service's neutral fallback (the judge's unparseable text answers).
    max_fallback_fraction: Annotated[float, Range(ge=0, le=1)] = 0.1
    # One section per registered service; in the YAML they sit directly under `rewards:`.
    sections: dict[str, ServiceConfig] = field(
        default_factory=_default_sections,
        metadata={"sections": lambda: {n: s.config for n, s in SERVICES.items()}},
    )

    # The shipped services' sections, typed; a service added to the registry is read with service(name).
    @property
    def pixel(self) -> PixelConfig:
        return self._typed("pixel", PixelConfig)

    @property
    def mllm(self) -> JudgeConfig:
        return self._typed("mllm", JudgeConfig)

    @property
    def synthetic(self) -> SyntheticJudgeConfig:
        return self._typed("synthetic", SyntheticJudgeConfig)

    def _typed(self, name: str, kind: type[_S]) -> _S:
        section = self.service(name)
        if not isinstance(section, kind):
            raise TypeError(f"rewards.{name} is a {type(section).__name__}, expected {kind.__name__}")
        return section

    def service(self, name: str) -> ServiceConfig:
        """The config section of reward service `name` (its scorer settings, scaling and server)."""
        if name not in self.sections:
            raise ValueError(f"unknown reward service {name!r}; known: {sorted(self.sections)}")
        return self.sections[name]

    def with_service(self, name: str, section: ServiceConfig) -> RewardsConfig:
        """A copy with the section of service `name` replaced."""
        self.service(name)
        return dataclasses.replace(self, sections={**self.sections, name: section})

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        total = sum(self.weights.values())
        if not total > 0:
            raise ValueError(
                f"weights={self.weights} must be >= 0 with a positive sum: R would be 0 for every edit"
            )
        for name in self.weights:
            if name in self.addresses:
                continue
            if name not in self.sections:
                raise ValueError(
                    f"weights has a weight for {name!r}, which is no reward service (known: "
                    f"{sorted(self.sections)}) and has no address in rewards.addresses"
                )
            if not self.sections[name].enabled:
                raise ValueError(
                    f"weights uses {name!r} but rewards.{name}.enabled is false; enable it, give "
                    f"rewards.addresses.{name}, or drop it from rewards.weights"
                )
            check_tls_named(self.sections[name].server, self.client, name)
            limit = self.sections[name].server.max_batch_edits
            if self.client.batch_edits > limit:
                raise ValueError(
                    f"client.batch_edits={self.client.batch_edits} is above rewards.{name}.server.max_batch_edits="
                    f"{limit}: every request would be refused; lower rewards.client.batch_edits to <= {limit}"
                )


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
    curate: CurateConfig = field(default_factory=CurateConfig)

    def check(self) -> None:
        """Rules between sections (the config loader calls this)."""
        data, rollout, learner = self.data, self.rollout, self.learner
        for key, name in (("policy.family", self.policy.family), ("pretrain.family", self.pretrain.family)):
            if name not in FAMILIES:
                raise ValueError(
                    f"{key}={name!r} is no model family; expected one of {sorted(FAMILIES)} (a new family is "
                    "an EditPolicy subclass plus one line in actors/policies/__init__.py: README, Extending)"
                )
        if data.manifest is None and data.n_items > data.synth_num:
            raise ValueError(
                f"data.n_items={data.n_items} distinct items per epoch, but the synthetic task has only "
                f"data.synth_num={data.synth_num}: raise data.synth_num or lower data.n_items"
            )
        if learner.objective == "nft" and learner.train_timesteps > rollout.num_steps:
            raise ValueError(
                f"learner.train_timesteps={learner.train_timesteps} exceeds rollout.num_steps="
                f"{rollout.num_steps}: the learner trains on timesteps the rollout visited"
            )
        if learner.objective == "grpo" and rollout.sampler != "sde":
            raise ValueError(
                f"learner.objective=grpo trains on the SDE sampler's log-probabilities: rollout.sampler="
                f"{rollout.sampler} must be sde"
            )
        if learner.objective == "grpo" and learner.sde_noise_level != rollout.sde_noise_level:
            raise ValueError(
                f"learner.sde_noise_level={learner.sde_noise_level:g} must equal rollout.sde_noise_level="
                f"{rollout.sde_noise_level:g}: GRPO re-evaluates the log-probabilities of the sampled steps"
            )
        if (
            self.run.colocate
        ):  # rollout worker i and learner rank i share bundle i (cluster/runtime/placement.py)
            if rollout.num_workers != learner.world_size:
                raise ValueError(
                    f"run.colocate pairs rollout worker i with learner rank i: rollout.num_workers="
                    f"{rollout.num_workers} must equal learner.world_size={learner.world_size}"
                )
            if rollout.gpus_per_worker + learner.gpus_per_rank > 1.0:
                raise ValueError(
                    f"run.colocate shares one GPU between a rollout worker and a learner rank: "
                    f"rollout.gpus_per_worker ({rollout.gpus_per_worker:g}) + learner.gpus_per_rank "
                    f"({learner.gpus_per_rank:g}) must be <= 1, e.g. 0.5 each"
                )
            pair = (
                rollout.cpus_per_worker
                + learner.cpus_per_rank
                + rollout.gpus_per_worker
                + learner.gpus_per_rank
            )
            asks = {"rollout.cpus_per_worker + learner.cpus_per_rank": pair}  # one bundle per pair
        else:
            asks = {
                "rollout.cpus_per_worker": rollout.cpus_per_worker + rollout.gpus_per_worker,
                "learner.cpus_per_rank": learner.cpus_per_rank + learner.gpus_per_rank,
            }
        for key, total in asks.items():
            if total == 0:  # a placement-group bundle cannot be empty
                raise ValueError(
                    f"{key} is 0 and no GPU is asked for: the actor cannot be placed; give it cpus > 0"
                )


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def load_config(
    path: Union[str, Path, None] = None, overrides: typing.Sequence[str] = (), rules: bool = True
) -> Config:
    """Read YAML `path` (default: tiny_cpu.yaml), apply `key.sub=value` overrides, return a Config.

    Every field is checked against its type and range; rules=False skips the rules between fields
    (`check()` of each section), for a config that is read only to derive more overrides from."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist (configs shipped: {sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))})"
        )
    with open(path) as f:
        try:
            raw = yaml.load(f, Loader=_YAML_LOADER) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. learner.lr=1e-4)")
        _set_dotted(raw, key.strip().split("."), _override_value(item, value))
    source = f"{path}" + (f" with overrides {[redact_text(o) for o in overrides]}" if overrides else "")
    cfg = _build(Config, raw, prefix="", source=source)
    if rules:
        _check_rules(cfg, "", source)
    return _resolve(cfg)


def to_dict(cfg: Any) -> dict:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            out: dict[str, Any] = {}
            for f in dataclasses.fields(v):
                value = plain(getattr(v, f.name))
                out.update(value if "sections" in f.metadata else {f.name: value})
            return out
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def redacted_dict(cfg: Any) -> dict:
    """to_dict with secrets (passwords and tokens in URLs, secret-named fields) as *** (cluster/redact.py):
    what config.yaml, `config show` and the trackers get."""
    return redact_tree(to_dict(cfg))


def dump_config(cfg: Config) -> str:
    """The config as YAML, secrets redacted."""
    return yaml.safe_dump(redacted_dict(cfg), sort_keys=False)


def _override_value(item: str, value: str) -> Any:
    """The YAML value of override `item` ("" when empty); a ConfigError saying how to quote it."""
    if not value.strip():
        return ""
    try:
        return yaml.load(value, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        key = item.partition("=")[0]
        problem = str(e).splitlines()[0]
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({problem}); quote it to pass it as a string, "
            f"e.g. '{key}=\"{value}\"'"
        ) from e


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


def _build(cls: type, raw: Any, prefix: str, source: str, base: Any = None) -> Any:
    """An instance of dataclass `cls` from mapping `raw`; keys `raw` leaves out keep the values of `base`
    (the default this section has in its parent), else the class defaults."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    inline = next((f for f in fields.values() if "sections" in f.metadata), None)
    section_types: dict[str, type] = inline.metadata["sections"]() if inline else {}
    names = (set(fields) - {inline.name} if inline else set(fields)) | set(section_types)
    unknown = sorted(set(raw) - names)
    if unknown:
        # a key that belongs one level down (e.g. rewards.pixel.replicas -> rewards.pixel.scaling.replicas)
        inner = [
            f"{prefix}{n}.{unknown[0]}"
            for n in sorted(names - set(section_types))
            if dataclasses.is_dataclass(hints[n])
            and unknown[0] in {f.name for f in dataclasses.fields(hints[n])}
        ]
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + (f" (did you mean {inner[0]}?)" if inner else "")
            + f"; valid keys of {where}: {sorted(names)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name in section_types:
            continue
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.", source, _default(fields[name], base))
        else:
            kwargs[name] = _coerce(tp, value, f"{prefix}{name}", source)
    if inline is not None:
        sections = dict(_default(inline, base))
        for name, cls_ in section_types.items():
            if name in raw:
                sections[name] = _build(cls_, raw[name], f"{prefix}{name}.", source, sections.get(name))
        kwargs[inline.name] = sections
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _default(f: dataclasses.Field, parent: Any) -> Any:
    """The value field `f` has when the config does not set it: the parent's, else its default."""
    if parent is not None:
        return getattr(parent, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _check_rules(obj: Any, key: str, source: str) -> None:
    """Call `check()` (a section's rules between its fields) on every section of `obj`, innermost
    first, so a rule sees fields already known to be valid; a broken rule names the section and file."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        children = value.items() if "sections" in f.metadata else [(f.name, value)]
        for name, child in children:
            if dataclasses.is_dataclass(child):
                _check_rules(child, f"{key}.{name}" if key else name, source)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ValueError as e:
            raise ConfigError(f"{source}: {key + ': ' if key else ''}{e}") from e


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin is Annotated:
        coerced = _coerce(args[0], value, key, source)
        for rng in (m for m in tp.__metadata__ if isinstance(m, Range)):
            try:
                check(key, coerced, rng)
            except ValueError as e:
                raise ConfigError(f"{source}: {e}") from e
        return coerced
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
