"""What a reward scorer implements; the gRPC server (rewards/server.py, rewards/edits.py) does decoding, validation,
concurrency and the wire format around it, so every service behaves the same."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class DecodedEdit:
    """One edit after PNG decoding and validation by the server."""

    edit_id: str
    group_id: str
    policy_version: int
    instruction: str
    source_image: np.ndarray  # [H, W, 3] uint8
    edited_image: np.ndarray  # [H, W, 3] uint8
    edit_mask: Optional[np.ndarray]  # [H, W] float32 in {0, 1}, 1 = edit; None when not sent
    target_image: Optional[np.ndarray] = None  # [H, W, 3] uint8
    warnings: list[str] = field(default_factory=list)


# Component a scorer sets to 1.0 on an edit it gave its neutral fallback score (0.0 on the others), so
# the fallbacks are counted and bounded per epoch (rewards/weighting.py), never mistaken for scores.
FALLBACK = "fallback"


@dataclass
class EditOutcome:
    """A score in [0, 1] with named components, or an error message; never both."""

    edit_id: str
    score: Optional[float] = None
    components: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)


class Scorer(ABC):
    service: str  # "pixel" | "mllm" | "synthetic"
    score_name: str  # name under which the client weights this score
    needs_mask: bool = False  # edits without a mask get a per-edit error
    needs_target: bool = False  # edits without a target get a per-edit error
    needs_instruction: bool = False  # edits with an empty instruction get a per-edit error

    async def load(self) -> None:  # noqa: B027 - optional hook
        """Heavy initialisation (model load, warm-up); health turns SERVING after it returns."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources on shutdown."""

    @abstractmethod
    def settings(self) -> dict[str, str]:
        """Resolved settings reported by the Info RPC (e.g. compat=standard, prompt_version=...)."""

    @abstractmethod
    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        """Score validated edits; one outcome per edit, in order. Must not raise for one bad edit."""
