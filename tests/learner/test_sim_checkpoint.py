"""The simulated editor (`cocoedit simulate`, actors/policies/sim.py) checkpoints through the learner's
own save and load: both LoRA views, DeepSpeed's engine state and the published diffusers-format LoRA.
On the code before this change the save failed (the sim transformer had no `peft_config`). ~5-10 s."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import load_policy
from cocoedit.learner.checkpoint import COMPLETE, latest_checkpoint
from cocoedit.learner.export import export_lora
from cocoedit.learner.learner import Learner
from tests.cluster.test_simulate import SPEC
from tests.learner import common


def _learner(cfg: PolicyConfig) -> Learner:
    return Learner(cfg, common.learner_config(zero_stage=0, kl_weight=0.0), policy=load_policy(cfg))


def test_sim_editor_saves_and_resumes(tmp_path: Path) -> None:
    cfg = PolicyConfig(family="sim", model_path=str(SPEC.write(tmp_path / "sim")), dtype="float32")
    a = _learner(cfg)
    batch = common.make_batch(a.policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool)
    a.update(batch, adv, valid)
    run_dir = tmp_path / "run"
    saved = a.save(run_dir, {"epoch": 0, "policy_version": 1}, keep_last=2)
    assert (saved / COMPLETE).is_file() and latest_checkpoint(run_dir) == saved
    views = {v: a.policy.lora_state_dict(v) for v in ("default", "old")}
    assert views["default"]["lora_B.weight"].abs().sum() > 0  # the update moved theta off the base
    a.update(batch, adv, valid)  # past the checkpoint: a resume must not see this

    b = _learner(cfg)
    assert b.load(saved) == {"epoch": 0, "policy_version": 1} and b.step == 1
    for view, state in views.items():
        for key, value in b.policy.lora_state_dict(view).items():
            assert torch.equal(value, state[key]), (view, key)
    assert b.update(batch, adv, valid)["learner/step"] == 2  # and it trains on

    # the published LoRA is diffusers' format: `transformer.` keys, the LoraConfig in the metadata
    with safe_open(str(run_dir / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert set(f.keys()) == {"transformer.lora_A.weight", "transformer.lora_B.weight"}
        assert torch.equal(f.get_tensor("transformer.lora_B.weight"), views["default"]["lora_B.weight"])
        lora_config = json.loads(f.metadata()["lora_adapter_metadata"])
    assert lora_config["transformer.r"] == SPEC.lora_rank
    exported = export_lora(saved, tmp_path / "old", view="old")
    with safe_open(str(exported), "pt") as f:
        assert torch.equal(f.get_tensor("transformer.lora_B.weight"), views["old"]["lora_B.weight"])
