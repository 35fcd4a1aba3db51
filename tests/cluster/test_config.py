import dataclasses
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main
from cocoedit.cluster.config import CONFIG_DIR, Config, ConfigError, load_config


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert dataclasses.is_dataclass(cfg.learner)


def test_paper_defaults_per_family() -> None:
    flux = load_config(CONFIG_DIR / "flux_kontext_8gpu.yaml")
    qwen = load_config(CONFIG_DIR / "qwen_image_edit_16gpu.yaml")
    assert flux.rewards.weights == {"mllm": 0.9, "pixel": 0.1}
    assert qwen.rewards.weights == {"mllm": 0.8, "pixel": 0.2}
    assert (flux.learner.lam_pos, flux.learner.lam_neg) == (0.02, 0.02)
    assert (qwen.learner.lam_pos, qwen.learner.lam_neg) == (0.8, 0.5)
    assert flux.data.n_items * flux.data.group_size == 288
    assert flux.policy.guidance == 2.5 and flux.rollout.sampler == "dpm2" and flux.rollout.num_steps == 10
    assert flux.learner.lr == 3e-4 and flux.policy.lora_rank == 32 and flux.policy.lora_alpha == 64


def test_overrides_apply_with_types() -> None:
    cfg = load_config(
        None, ["learner.lr=1e-4", "rollout.num_steps=12", "learner.betas=[0.8, 0.95]", "run.name=x"]
    )
    assert cfg.learner.lr == 1e-4
    assert cfg.rollout.num_steps == 12
    assert cfg.learner.betas == (0.8, 0.95)
    assert cfg.run.run_dir == "runs/x"


def test_configs_are_frozen() -> None:
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learner.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, words",
    [
        ("learner.lrr=1", ["unknown key learner.lrr", "tiny_cpu.yaml"]),
        ("nosection.x=1", ["unknown key nosection"]),
        ("learner.lr=fast", ["learner.lr must be a number"]),
        ("rollout.num_steps=2.5", ["rollout.num_steps must be an integer"]),
        ("rollout.sampler=heun", ["rollout.sampler must be one of", "dpm2"]),
        ("learner.use_reg=maybe", ["learner.use_reg must be true or false"]),
        ("learner.lr", ["must look like section.key=value"]),
    ],
)
def test_bad_overrides_name_the_key(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_file_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lam_poss: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key learner\.lam_poss"):
        load_config(bad)


def test_cli_config_show_and_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "learner.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "name: tiny_cpu" in out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "resolved config" in out and "sampler: dpm2" in out
    assert main(["config", "show", "learner.bogus=1"]) == 1
    assert "unknown key learner.bogus" in capsys.readouterr().err


def test_cli_overrides_may_follow_options(capsys: pytest.CaptureFixture[str]) -> None:
    # positionals after an option are left over by argparse; they are overrides all the same
    assert (
        main(
            [
                "config",
                "show",
                "learner.lr=0.25",
                "--config",
                str(CONFIG_DIR / "tiny_cpu.yaml"),
                "run.epochs=7",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "lr: 0.25" in out and "epochs: 7" in out
    with pytest.raises(SystemExit):
        main(["config", "show", "--bogus-flag"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "learner.objective=bogus",
            r"learner: objective='bogus' is unknown; expected one of \['grpo', 'nft'\]",
        ),
        ("rewards.mllm.prompt_version=v9", r"rewards.mllm: prompt_version='v9' is unknown; known versions"),
        ("policy.family=sdxl", r"policy.family='sdxl' is no model family"),
    ],
)
def test_every_registry_name_is_checked_at_load(override: str, message: str) -> None:
    """A name that selects an implementation from a registry is refused by the loader, not by the first
    process that reaches for the implementation minutes later."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_every_config_field_is_described_where_it_is_declared(capsys: pytest.CaptureFixture[str]) -> None:
    """`cocoedit config show --explain` prints each key with the comment written at its declaration."""
    from cocoedit.cluster.cli import main
    from cocoedit.cluster.explain import undocumented

    assert undocumented(load_config(None, [])) == []
    assert main(["config", "show", "--explain", "learner.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.5  # " in out
    assert "  valid_min_std: 0.005  # Groups whose reward std is at most this are not trained on" in out
    assert "    gpus_per_replica: 1.0  # GPUs each replica asks for" in out  # rewards.mllm.scaling
