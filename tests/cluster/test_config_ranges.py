"""Every numeric config field declares its valid range, and a value outside it is refused at load.

THE RULE this file enforces: every int or float field of every config section (including registered
reward services' sections, dict values and tuple items) is declared `Annotated[..., Range(...)]` next to
the field (cocoedit/ranges.py). A new numeric field without a Range fails
`test_every_numeric_field_has_a_range`; its out-of-range values are then generated from the Range and
must be refused by `cocoedit config show` naming the key, the value, the range and the file.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoedit.cluster.cli import main
from cocoedit.cluster.config import CONFIG_DIR, Config, ConfigError, dump_config, load_config
from cocoedit.ranges import Range, check_fields, unwrap
from cocoedit.rewards.serve import SERVICES


def numeric_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, type, Range | None]]:
    """(dotted key, int or float, its Range) of every numeric field under config class `cls`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if "sections" in f.metadata:  # the reward services' sections, one per registered service
            for name, service in SERVICES.items():
                yield from numeric_fields(service.config, f"{prefix}{name}.")
            continue
        yield from _numeric(key, hints[f.name])


def _numeric(key: str, tp: Any) -> Iterator[tuple[str, type, Range | None]]:
    inner, rng, _ = unwrap(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if dataclasses.is_dataclass(inner):
        yield from numeric_fields(inner, key + ".")
    elif inner in (int, float):
        yield key, inner, rng
    elif origin is dict:
        yield from _numeric(f"{key}.pixel", args[1])  # a dict's values: checked under one sample key
    elif origin is tuple:
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        for i, a in enumerate(items):
            yield from _numeric(f"{key}[{i}]", a)


def out_of_range(kind: type, rng: Range) -> list[Any]:
    """Values just past each bound of `rng` (and NaN for floats)."""
    values: list[Any] = []
    if rng.ge is not None:
        values.append(rng.ge - 1)
    if rng.gt is not None:
        values.append(rng.gt)
    if rng.le is not None:
        values.append(rng.le + 1)
    if rng.lt is not None:
        values.append(rng.lt)
    if kind is float:
        values.append(math.nan)
    return [kind(v) if kind is int else float(v) for v in values]


FIELDS = list(numeric_fields(Config))
CASES = [
    pytest.param(key, value, rng, id=f"{key}={value}")
    for key, kind, rng in FIELDS
    if rng is not None
    for value in out_of_range(kind, rng)
]


def _override(key: str, value: Any) -> str:
    """`key=value` as the command line takes it; a tuple item replaces one item of the default."""
    text = ".nan" if isinstance(value, float) and math.isnan(value) else repr(value)
    if key.endswith("]"):
        name, index = key[:-1].split("[")
        default = list(_default(name))
        default[int(index)] = value
        items = ", ".join(".nan" if isinstance(v, float) and math.isnan(v) else repr(v) for v in default)
        return f"{name}=[{items}]"
    return f"{key}={text}"


def _default(key: str) -> Any:
    node: Any = load_config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_every_numeric_field_has_a_range() -> None:
    assert len(FIELDS) > 100  # the walk reaches every section (learner, rewards.<service>.scaling, ...)
    missing = [key for key, _, rng in FIELDS if rng is None]
    assert missing == [], (
        f"config fields without a valid range: {missing}. Declare one next to each field: "
        "`name: Annotated[int, Range(ge=1)] = 4` (cocoedit/ranges.py)"
    )


def test_defaults_and_shipped_configs_are_in_range() -> None:
    check_fields(Config(), "")
    check_fields(load_config(), "")


@pytest.mark.parametrize("key, value, rng", CASES)
def test_out_of_range_value_is_refused_at_load(
    key: str, value: Any, rng: Range, capsys: pytest.CaptureFixture[str]
) -> None:
    override = _override(key, value)
    assert main(["config", "show", override]) == 1
    err = capsys.readouterr().err
    assert f"{key}={value!r}" in err, err
    assert rng.describe() in err and "tiny_cpu.yaml" in err, err


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["rewards.weights={synthetic: 0, pixel: 0}"], ["rewards: weights=", "positive sum"]),
        (["rewards.weights={pixel: 1, clip: 0.5}"], ["weight for 'clip'", "no reward service"]),
        (["rewards.weights={mllm: 1}"], ["rewards.mllm.enabled is false"]),
        (["rewards.pixel.scaling.min_replicas=3"], ["rewards.pixel.scaling: replicas=1 must lie within"]),
        (["rewards.pixel.window=10"], ["rewards.pixel: window=10 must be odd"]),
        (["data.synth_num=16", "data.n_items=20"], ["data.n_items=20", "data.synth_num=16"]),
        (["learner.train_timesteps=11"], ["learner.train_timesteps=11 exceeds rollout.num_steps=10"]),
        (
            ["rollout.cpus_per_worker=0"],
            ["rollout.cpus_per_worker is 0 and no GPU is asked for", "cannot be placed"],
        ),
        (["rewards.pixel.replicas=2"], ["did you mean rewards.pixel.scaling.replicas?"]),
        (["learner.objective=grpo"], ["rollout.sampler=dpm2 must be sde"]),
        (
            ["learner.objective=grpo", "rollout.sampler=sde", "rollout.sde_noise_level=0.5"],
            ["learner.sde_noise_level=0.7 must equal rollout.sde_noise_level=0.5"],
        ),
    ],
)
def test_rules_between_fields_are_checked_at_load(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_an_external_service_may_be_weighted_under_any_name() -> None:
    cfg = load_config(
        None, ["rewards.weights={pixel: 1, clip: 0.5}", "rewards.addresses={clip: ['127.0.0.1:5']}"]
    )
    assert cfg.rewards.weights == {"pixel": 1.0, "clip": 0.5}


def test_a_partial_section_keeps_its_services_defaults() -> None:
    """`rewards.mllm.scaling.replicas=2` leaves the judge's own default of one GPU per replica."""
    cfg = load_config(None, ["rewards.mllm.scaling.replicas=2"])
    assert cfg.rewards.mllm.scaling.gpus_per_replica == 1.0 and cfg.rewards.mllm.scaling.replicas == 2
    assert cfg.rewards.synthetic.scaling.cpus_per_replica == 0.25  # tiny_cpu.yaml's, not the class default


HEAVY = ("ray", "torch", "deepspeed", "vllm", "diffusers")


@pytest.mark.parametrize(
    "override, key", [("data.group_size=0", "data.group_size=0"), ("learner.lr=nan", "learner.lr=nan")]
)
def test_train_with_a_bad_value_exits_before_ray_or_torch_load(override: str, key: str) -> None:
    """`cocoedit train data.group_size=0` exits 1 naming the key; Ray is never imported, so no Ray process
    can have started (nor torch, which the slow start came from)."""
    code = (
        "import sys; from cocoedit.cluster.cli import main; rc = main(sys.argv[1:]); "
        f"print('imported:', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", override], capture_output=True, text=True, timeout=120
    )
    took = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr
    assert key in proc.stderr and "out of range" in proc.stderr, proc.stderr
    assert "imported: []" in proc.stderr, proc.stderr
    print(f"`cocoedit train {override}` exited 1 after {took:.2f} s (upper bound: shared machine)")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_dumped_config_loads_back_equal(path: Path, tmp_path: Path) -> None:
    """`config show` output (also the run directory's config.yaml) is a config that loads to the same
    values: the services' sections sit under `rewards:` as in the file they came from."""
    cfg = load_config(path)
    (tmp_path / "dumped.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "dumped.yaml") == cfg
