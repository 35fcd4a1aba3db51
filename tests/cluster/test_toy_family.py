"""A new model family is an EditPolicy subclass plus one line in FAMILIES (README, Extending).

The toy family is FLUX.1-Kontext with every instruction prefixed by a style tag, saved under its own
pipeline name. With its one registry line it is accepted by the config loader, recognised in a model
directory, given its stock evaluation settings, sampled by the RolloutWorker and trained by the Learner:
the same code paths as the shipped families, with no other place to edit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from cocoedit.actors.config import RolloutConfig
from cocoedit.actors.policies import FAMILIES, Family, load_policy, read_family
from cocoedit.actors.policies.flux_kontext import FluxKontextPolicy
from cocoedit.actors.policies.tiny import build_tiny_model
from cocoedit.actors.rollout import RolloutWorker
from cocoedit.cluster.config import ConfigError, load_config
from cocoedit.cluster.eval.config import generation_settings
from cocoedit.learner.learner import Learner
from tests.actors.test_rollout import make_items
from tests.learner import common


class ToyKontextPolicy(FluxKontextPolicy):
    """FLUX.1-Kontext that edits every instruction in one style."""

    family = "toy_kontext"
    PREFIX = "in watercolour: "
    seen: list[str] = []  # instructions as the text encoders got them

    def encode_condition(self, instructions, source_images):  # type: ignore[no-untyped-def]
        prefixed = [self.PREFIX + text for text in instructions]
        ToyKontextPolicy.seen.extend(prefixed)
        return super().encode_condition(prefixed, source_images)


TOY = Family(
    "toy_kontext",
    f"{__name__}:ToyKontextPolicy",
    "ToyKontextPipeline",
    num_steps=8,
    guidance=3.0,
    true_cfg_scale=1.0,
    true_cfg=False,
)


@pytest.fixture
def toy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny model directory of the toy family, with the family registered."""
    monkeypatch.setitem(FAMILIES, TOY.name, TOY)  # the one registry line
    path = build_tiny_model("flux_kontext", tmp_path / "toy", seed=0, **common.MODEL_KWARGS)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": TOY.pipeline}))
    return path


def test_an_unregistered_family_is_a_config_error_naming_the_registry() -> None:
    with pytest.raises(ConfigError, match=r"policy.family='toy_kontext' is no model family.*Extending"):
        load_config(None, ["policy.family=toy_kontext"])


def test_a_registered_family_is_configured_sampled_and_trained(toy_dir: Path) -> None:
    cfg = load_config(None, ["policy.family=toy_kontext", f"policy.model_path={toy_dir}"])
    assert read_family(toy_dir) == "toy_kontext"
    settings = generation_settings(cfg.policy, cfg.eval)
    assert (settings["num_steps"], settings["guidance"], settings["true_cfg"]) == (8, 3.0, False)

    policy_cfg = common.policy_config(toy_dir)
    policy_cfg = dataclasses.replace(policy_cfg, family="toy_kontext")
    policy = load_policy(policy_cfg)
    assert type(policy) is ToyKontextPolicy

    ToyKontextPolicy.seen.clear()
    worker = RolloutWorker(policy_cfg, RolloutConfig(sampler="dpm2", num_steps=2, batch_size=2), policy)
    items = make_items(n_items=1, group_size=2)
    batch = worker.sample(items, policy_version=0)
    assert batch.x0.shape[0] == 2 and torch.isfinite(batch.x0).all()
    assert ToyKontextPolicy.seen and all(t.startswith(ToyKontextPolicy.PREFIX) for t in ToyKontextPolicy.seen)

    learner = Learner(policy_cfg, common.learner_config(train_timesteps=1), policy=policy)
    before = {k: v.clone() for k, v in policy.lora_state_dict("default").items()}
    metrics = learner.update(batch, torch.tensor([1.0, -1.0]), torch.ones(2, dtype=torch.bool))
    assert not metrics.get("learner/skipped") and math.isfinite(metrics["loss/total"])
    after = policy.lora_state_dict("default")
    assert common.lora_max_diff(before, after) > 0  # the update reached the toy family's LoRA
