"""A new reward service is one file plus one registry line (README, Extending).

The toy service below (its config section and its Scorer, as a service's own file would hold them) is
registered with one line, `SERVICES["toy"] = Service(ToyConfig, ToyScorer)`. From then on the config
loader knows `rewards.toy`, the placement check counts its replicas, and a run's RewardServices starts
them on Ray and scores through the real gRPC server and client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pytest

from cocoedit.cluster.config import ConfigError, load_config
from cocoedit.cluster.runtime.placement import Demand, PlacementError, check_cluster, demands
from cocoedit.ranges import Range
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.client import make_edit
from cocoedit.rewards.config import ServiceConfig
from cocoedit.rewards.serve import SERVICES, Service


@dataclass(frozen=True)
class ToyConfig(ServiceConfig):
    """rewards.toy: the edited image's mean brightness times `gain`, capped at 1."""

    gain: Annotated[float, Range(ge=0)] = 1.0


class ToyScorer(Scorer):
    service = "toy"
    score_name = "toy"

    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg = cfg

    def settings(self) -> dict[str, str]:
        return {"gain": str(self.cfg.gain)}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        out = []
        for e in edits:
            brightness = float(e.edited_image.mean()) / 255
            out.append(
                EditOutcome(
                    e.edit_id,
                    score=min(1.0, self.cfg.gain * brightness),
                    components={"brightness": brightness},
                )
            )
        return out


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SERVICES, "toy", Service(ToyConfig, ToyScorer))  # the one registry line


TOY = ["rewards.weights={pixel: 0.5, toy: 0.5}", "rewards.toy.gain=2"]


def _edits(levels: list[int]) -> list:
    src = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    return [
        make_edit(f"e{i}", "g0", 0, "brighten", src, np.full((16, 16, 3), v, np.uint8), mask)
        for i, v in enumerate(levels)
    ]


def test_unregistered_service_is_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown key rewards.toy"):
        load_config(None, ["rewards.toy.gain=2"])


def test_registered_service_is_configured_checked_and_placed(toy: None) -> None:
    cfg = load_config(
        None, [*TOY, "rewards.toy.scaling.replicas=3", "rewards.toy.scaling.cpus_per_replica=0.5"]
    )
    assert cfg.rewards.service("toy").gain == 2.0 and cfg.rewards.service("toy").scaling.replicas == 3
    with pytest.raises(ConfigError, match=r"rewards.toy.gain=-1.0 is out of range: valid values are >= 0"):
        load_config(None, [*TOY, "rewards.toy.gain=-1"])
    assert Demand("reward service toy replicas", 3, 0.5, 0.0, "") in [
        Demand(d.role, d.count, d.cpus, d.gpus, "") for d in demands(cfg)
    ]
    # learner 0.5 + rollout 0.5 + pixel 0.25 CPU leave 1.25 of 2.5: the toy's 3 x 0.5 do not fit
    with pytest.raises(
        PlacementError, match=r"reward service toy replicas ask 3 x 0.5 CPU = 1.5, but only 1.25"
    ):
        check_cluster(demands(cfg), {"CPU": 2.5}, [{"CPU": 2.5}])


def test_registered_service_runs_on_ray_and_scores_through_grpc(toy: None, ray_local) -> None:  # noqa: ANN001
    from cocoedit.cluster.runtime.services import RewardServices

    cfg = load_config(
        None, [*TOY, "rewards.toy.scaling.replicas=2", "rewards.toy.scaling.cpus_per_replica=0.1"]
    )
    services = RewardServices(cfg.rewards)
    try:
        assert len(services.replicas["toy"]) == 2 and len(services.addresses("toy")) == 2
        outcomes = services.score(_edits([0, 51, 102, 255]))["toy"]
        assert [o.edit_id for o in outcomes] == ["e0", "e1", "e2", "e3"]
        assert [o.score for o in outcomes] == pytest.approx([0.0, 0.4, 0.8, 1.0])  # gain 2, capped at 1
        assert outcomes[1].components["brightness"] == pytest.approx(0.2)
    finally:
        services.close()
