"""Shared fixtures of the reward tests: synthetic edits (alone, or in groups that share a source, mask
and target), a pixel server on a free 127.0.0.1 port, and small real scorers (gated, raising, NaN,
target/instruction-needing) to drive the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import torch

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import ClientConfig, PixelConfig, ServerConfig
from cocoedit.rewards.images import decode_png
from cocoedit.rewards.metrics import pixel_reward
from cocoedit.rewards.server import grpc_message_options


def synthetic_edit_arrays(
    rng: np.random.Generator, h: int = 32, w: int = 32, noise: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source [H,W,3] uint8, edited [H,W,3] uint8, edit_mask [H,W] bool): a random box is repainted,
    the rest gets +-noise grey-level jitter."""
    source = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0 : y0 + rng.integers(2, h // 2), x0 : x0 + rng.integers(2, w // 2)] = True
    jitter = rng.integers(-noise, noise + 1, (h, w, 3))
    edited = np.clip(source.astype(np.int64) + jitter, 0, 255).astype(np.uint8)
    edited[mask] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return source, edited, mask


def make_edits(n: int, h: int = 32, w: int = 32, seed: int = 0, prefix: str = "e") -> list:
    from cocoedit.rewards.client import make_edit

    rng = np.random.default_rng(seed)
    edits = []
    for i in range(n):
        source, edited, mask = synthetic_edit_arrays(rng, h, w)
        edits.append(make_edit(f"{prefix}{i}", f"g{i // 4}", 0, "repaint the box", source, edited, mask))
    return edits


def groups_of(sizes: list[int], h: int = 24, w: int = 24, seed: int = 0) -> list[reward_pb2.Edit]:
    """Edits of groups `g0`, `g1`, ... of the given sizes, each edit carrying its group's source, mask and
    target (the ungrouped form) and its own edited image (the target inside the mask, +-9 jitter)."""
    from cocoedit.rewards.client import make_edit

    rng = np.random.default_rng(seed)
    edits = []
    for g, size in enumerate(sizes):
        source, _, mask = synthetic_edit_arrays(rng, h, w)
        target = source.copy()
        target[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        for k in range(size):
            edited = np.where(mask[:, :, None], target, source).astype(np.uint8)
            edited = np.clip(edited.astype(np.int16) + rng.integers(-9, 10, edited.shape), 0, 255)
            edits.append(
                make_edit(f"g{g}:{k}", f"g{g}", 0, "recolour", source, edited.astype(np.uint8), mask, target)
            )
    return edits


def on_the_wire(edits: list[reward_pb2.Edit], grouped: set[str]) -> reward_pb2.ScoreRequest:
    """The request with the edits of `grouped` groups sent as to_groups sends them: source, mask and
    target once in a Group, the edits without them; the other edits as they are."""
    request = reward_pb2.ScoreRequest()
    for edit in edits:
        if edit.group_id not in grouped:
            request.edits.append(edit)
            continue
        if edit.group_id not in {g.group_id for g in request.groups}:
            request.groups.add(
                group_id=edit.group_id,
                source_image=edit.source_image,
                edit_mask=edit.edit_mask,
                target_image=edit.target_image,
            )
        request.edits.add(
            edit_id=edit.edit_id,
            group_id=edit.group_id,
            instruction=edit.instruction,
            edited_image=edit.edited_image,
        )
    return request


class GateScorer(Scorer):
    """Scores 0.5 for every edit, but load() and score() wait until the test opens their gates."""

    service = "gate"
    score_name = "gate"

    def __init__(self, gate_load: bool = False) -> None:
        self.load_gate = threading.Event()
        self.score_gate = threading.Event()
        self.score_entered = threading.Event()
        if not gate_load:
            self.load_gate.set()
        self.score_gate.set()

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.load_gate.wait)

    def settings(self) -> dict[str, str]:
        return {"kind": "gate"}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        self.score_entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.score_gate.wait)
        return [EditOutcome(e.edit_id, score=0.5) for e in edits]


class TargetScorer(Scorer):
    """Needs target and instruction: score = 1 - mean |edited - target| / 255; NaN for edit ids
    starting with "nan"; raises for an instruction "raise"."""

    service = "target"
    score_name = "target"
    needs_target = True
    needs_instruction = True

    def settings(self) -> dict[str, str]:
        return {"kind": "target"}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        out = []
        for e in edits:
            if e.instruction == "raise":
                raise RuntimeError("scorer blew up on purpose")
            diff = np.abs(e.edited_image.astype(np.float64) - e.target_image.astype(np.float64)).mean() / 255
            score = float("nan") if e.edit_id.startswith("nan") else 1.0 - diff
            out.append(
                EditOutcome(e.edit_id, score=score, components={"l1": diff}, warnings=list(e.warnings))
            )
        return out


@pytest.fixture
def serve() -> Iterator[Callable]:
    """serve(scorer, **server_cfg) -> a started BackgroundServer on a free port, stopped after the test."""
    from cocoedit.rewards.hosting import BackgroundServer

    servers = []

    def start(scorer: Scorer, wait_loaded: bool = True, **cfg) -> BackgroundServer:
        srv = BackgroundServer(scorer, ServerConfig(**{"grace_s": 0.5, **cfg}), wait_loaded=wait_loaded)
        servers.append(srv.start())
        return srv

    yield start
    for srv in servers:
        srv.stop(0)


@pytest.fixture(scope="module")
def pixel_server() -> Iterator:
    """One standard-mode pixel server per test module."""
    from cocoedit.rewards.hosting import BackgroundServer
    from cocoedit.rewards.pixel import PixelScorer

    with BackgroundServer(PixelScorer(PixelConfig(threads=1)), ServerConfig(grace_s=0.5)) as srv:
        yield srv


@pytest.fixture
def fast_client_cfg() -> ClientConfig:
    return ClientConfig(timeout_s=20.0, retries=3, backoff_s=0.01, ready_timeout_s=10.0, batch_edits=8)


def stub(address: str) -> reward_pb2_grpc.RewardServiceStub:
    return reward_pb2_grpc.RewardServiceStub(grpc.insecure_channel(address, options=grpc_message_options(64)))


def expected_scores(edits: list[reward_pb2.Edit], compat: str = "standard") -> dict[str, torch.Tensor]:
    """The in-process reward of the same edits (decoded from the same PNGs)."""
    unit = lambda b: torch.from_numpy(decode_png(b)).permute(2, 0, 1).float() / 255  # noqa: E731
    edited = torch.stack([unit(e.edited_image) for e in edits])
    source = torch.stack([unit(e.source_image) for e in edits])
    mask = torch.stack([torch.from_numpy(decode_png(e.edit_mask) >= 128).float()[None] for e in edits])
    return pixel_reward(edited, source, mask, compat=compat)
