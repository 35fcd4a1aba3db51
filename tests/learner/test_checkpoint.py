"""Checkpoints keep our own state as JSON and safetensors: RNG states round-trip exactly, every file is
checked against the checkpoint's sha256 manifest, and a file in the run directory carrying a pickle that
would run code (ours, or DeepSpeed's engine state) is refused with a clear error, never unpickled.
(Saving and resuming a real learner bit-exactly: tests/learner/test_learner.py and the resume test of
tests/cluster/test_train.py.)"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cocoedit.learner.checkpoint import (
    COMPLETE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    read_rng_state,
    save_rng_state,
    set_rng_state,
)
from cocoedit.learner.integrity import write_manifest
from cocoedit.learner.learner import Learner
from tests.learner import common


class Payload:
    """Unpickling this creates `marker`: the stand-in for code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@dataclass
class Untouched:
    """A learner rank of which load_checkpoint may read only rank and world size before the checkpoint's
    own files are checked: it has no engine or policy to restore into."""

    rank: int = 0
    world_size: int = 1
    engine: Any = None
    policy: Any = None


def _draws() -> tuple:
    return torch.rand(4), np.random.standard_normal(3), np.random.randint(0, 2**31, 3), random.gauss(0, 1)


def test_rng_states_round_trip_exactly(tmp_path: Path) -> None:
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    np.random.standard_normal(1)  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's (gauss_next)
    save_rng_state(tmp_path / "rng.safetensors")
    first = _draws()
    set_rng_state(read_rng_state(tmp_path / "rng.safetensors"))
    again = _draws()
    assert torch.equal(first[0], again[0]) and first[3] == again[3]
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[2], again[2])


def _checkpoint(root: Path) -> Path:
    """A complete checkpoint directory with our own files as save_checkpoint writes them."""
    ckpt = root / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "learner_state.json").write_text(
        json.dumps({"step": 1, "world_size": 1, "zero_stage": 2, "extra_state": {"epoch": 0}})
    )
    save_rng_state(ckpt / "rng_rank0.safetensors")
    write_manifest(ckpt)
    (ckpt / COMPLETE).write_text('{"step": 1}')
    return ckpt


@pytest.mark.parametrize("tampered", ["learner_state", "rng"])
def test_a_pickle_payload_in_the_checkpoint_is_refused_and_never_run(tmp_path: Path, tampered: str) -> None:
    ckpt = _checkpoint(tmp_path)
    marker = tmp_path / "code_ran"
    payload = pickle.dumps(Payload(marker))
    if tampered == "learner_state":  # the old format's pickle, which anyone who can write there may drop in
        (ckpt / "learner_state.json").unlink()
        (ckpt / "learner_state.pt").write_bytes(payload)
        match = r"no learner_state.json; it holds pickled state \(learner_state.pt\), which this version never loads"
    else:
        (ckpt / "rng_rank0.safetensors").write_bytes(payload)
        match = r"rng_rank0.safetensors is not an RNG state written by cocoedit"
    write_manifest(ckpt)  # whoever can write the directory can rewrite the manifest too
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(Untouched(), tmp_path)  # type: ignore[arg-type]
    assert not marker.exists()


@pytest.mark.parametrize("change", ["added", "changed", "removed", "no_manifest"])
def test_a_file_that_differs_from_the_manifest_is_refused_naming_it(tmp_path: Path, change: str) -> None:
    ckpt = _checkpoint(tmp_path)
    if change == "added":
        (ckpt / "extra.pt").write_bytes(b"x")
        match = r"extra.pt is not listed in .*MANIFEST.json"
    elif change == "changed":
        (ckpt / "learner_state.json").write_text(
            '{"step": 1, "world_size": 1, "zero_stage": 0, "extra_state": {}}'
        )
        match = r"learner_state.json differs from its sha256 in .*MANIFEST.json"
    elif change == "removed":
        (ckpt / "rng_rank0.safetensors").unlink()
        match = r"rng_rank0.safetensors is listed in .*MANIFEST.json but missing"
    else:
        (ckpt / "MANIFEST.json").unlink()
        match = r"no MANIFEST.json"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(Untouched(), tmp_path)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model and a run directory with one real checkpoint (ZeRO-2: model and optimizer .pt files)."""
    model_dir = common.build_model(tmp_path_factory.mktemp("tiny_flux"))
    run_dir = tmp_path_factory.mktemp("run")
    policy = common.load(model_dir)
    learner = Learner(policy.cfg, common.learner_config(), policy=policy)  # type: ignore[attr-defined]
    learner.update(
        common.make_batch(policy), torch.tensor([1.0, -1.0, 0.3, -0.3]), torch.ones(4, dtype=torch.bool)
    )
    learner.save(run_dir, {"epoch": 0})
    return model_dir, run_dir


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_pickle_payload_in_deepspeeds_engine_state_is_refused_and_never_run(
    saved_run: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    """The probe of issue 29: a pickle with a __reduce__ dropped over DeepSpeed's state (and the manifest
    rewritten to match) ran when the run was resumed."""
    import shutil

    model_dir, run_dir = saved_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt = latest_checkpoint(copy)  # the fixture's checkpoint (epoch_00000001: one epoch done)
    assert ckpt is not None
    marker = tmp_path / "code_ran"
    (ckpt / "deepspeed" / name).write_bytes(pickle.dumps(Payload(marker)))
    write_manifest(ckpt)
    policy = common.load(model_dir)
    learner = Learner(policy.cfg, common.learner_config(), policy=policy)  # type: ignore[attr-defined]
    with pytest.raises(
        CheckpointError, match=rf"{name} holds more than tensors .* refused without running it"
    ):
        learner.load(copy)
    assert not marker.exists()
    assert learner.load(run_dir) == {"epoch": 0}  # the untouched checkpoint still loads
