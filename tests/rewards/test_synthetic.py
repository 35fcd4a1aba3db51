import asyncio
import math

import numpy as np
import pytest
import torch

from cocoedit.rewards.base import DecodedEdit
from cocoedit.rewards.synthetic import SyntheticJudge, instruction_scores


def _pair(size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[4:10, 4:10] = 1
    target = source.copy()
    target[4:10, 4:10] = [0, 0, 255]
    return source, target, mask


def _edit(edit_id: str, source, edited, target, mask) -> DecodedEdit:
    return DecodedEdit(edit_id, "g", 0, "make it blue", source, edited, mask, target)


def test_target_scores_one_source_scores_zero() -> None:
    source, target, mask = _pair()
    out = asyncio.run(
        SyntheticJudge().score(
            [_edit("t", source, target, target, mask), _edit("s", source, source, target, mask)]
        )
    )
    assert out[0].score == pytest.approx(1.0) and out[0].error is None
    assert out[1].score == pytest.approx(0.0)
    assert out[1].components["ratio"] == pytest.approx(1.0)


def test_halfway_edit_scores_by_removed_error() -> None:
    # An edit halfway between source and target in every pixel of E removes 3/4 of the squared error.
    s = torch.rand(2, 3, 8, 8)
    t = torch.rand(2, 3, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:6, 2:6] = 1
    e = torch.where(m.bool(), (s + t) / 2, s)
    out = instruction_scores(s, e, t, m)
    assert torch.allclose(out["ratio"], torch.full((2,), 0.25), atol=1e-6)
    assert torch.allclose(out["score"], torch.full((2,), 0.75), atol=1e-6)


def test_outside_region_does_not_count() -> None:
    source, target, mask = _pair()
    edited = target.copy()
    edited[0:3, 0:3] = 0  # damage outside the edit region: the pixel service's job, not this judge's
    (out,) = asyncio.run(SyntheticJudge().score([_edit("x", source, edited, target, mask)]))
    assert out.score == pytest.approx(1.0)


def test_unscorable_edits_are_errors_not_defaults() -> None:
    source, target, mask = _pair()
    empty = np.zeros_like(mask)
    out = asyncio.run(
        SyntheticJudge().score(
            [_edit("empty", source, target, target, empty), _edit("same", source, source, source, mask)]
        )
    )
    assert out[0].score is None and "edit_mask is empty" in out[0].error
    assert out[1].score is None and "target equals source" in out[1].error
    assert all(o.score is None or not math.isnan(o.score) for o in out)
