"""Checkpoints keep our own state as JSON and safetensors: RNG states round-trip exactly, and a file in
the run directory carrying a pickle that would run code is refused with a clear error, never unpickled.
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
    load_checkpoint,
    read_rng_state,
    save_rng_state,
    set_rng_state,
)


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
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(Untouched(), tmp_path)  # type: ignore[arg-type]
    assert not marker.exists()
