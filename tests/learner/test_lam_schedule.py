"""learner.lam_schedule: the multiplier m(t) of lam_pos and lam_neg (learner/schedule.py), through the
real NFT loss and a real Learner update, its config checks, the resume rule, search / sweep values and
the model card. (A whole scheduled run, interrupted and resumed bit-exactly, with its logged weights:
tests/cluster/test_train.py test_resume_continues_exactly.)"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch

from cocoedit.cluster.config import ConfigError, dump_config, load_config
from cocoedit.cluster.export.card import write_card
from cocoedit.cluster.sweep.search import Search, parse_dimension
from cocoedit.cluster.sweep.tune import Sweep, grid_settings
from cocoedit.cluster.train.resume import ResumeConfigError, check_config
from cocoedit.learner.config import LearnerConfig
from cocoedit.learner.learner import Learner
from cocoedit.learner.losses import nft_objective, region_weights
from cocoedit.learner.objectives import NFT
from cocoedit.learner.schedule import lam_multiplier, run_fraction
from tests.learner import common

RAMP = ["learner.lam_schedule=linear", "learner.lam_schedule_start=0"]


def _sched(kind: str, start: float = 0.2, end: float = 1.0, at: float = 0.5) -> LearnerConfig:
    return LearnerConfig(
        lam_schedule=kind, lam_schedule_start=start, lam_schedule_end=end, lam_schedule_at=at
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "at_0", "at_half", "at_1"),
    [
        ("constant", 1.0, 1.0, 1.0),  # start and end unused
        ("linear", 0.2, 0.6, 1.0),
        ("cosine", 0.2, 0.6, 1.0),
        ("step", 0.2, 1.0, 1.0),  # end from t >= lam_schedule_at = 0.5
    ],
)
def test_multiplier_at_the_ends_and_the_middle(kind: str, at_0: float, at_half: float, at_1: float) -> None:
    cfg = _sched(kind)
    assert lam_multiplier(cfg, 0.0) == at_0 and lam_multiplier(cfg, 1.0) == at_1  # exact at the ends
    assert lam_multiplier(cfg, 0.5) == pytest.approx(at_half, abs=1e-12)


def test_cosine_is_flat_at_the_ends_and_step_switches_at_its_fraction() -> None:
    cos, lin = _sched("cosine", 1.0, 0.0), _sched("linear", 1.0, 0.0)
    assert lam_multiplier(cos, 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lam_multiplier(cos, 0.1) > lam_multiplier(lin, 0.1)  # decays slower than linear at first
    step = _sched("step", 0.0, 3.0, at=0.3)
    assert [lam_multiplier(step, t) for t in (0.0, 0.29, 0.3, 1.0)] == [0.0, 0.0, 3.0, 3.0]
    assert lam_multiplier(_sched("step", 0.0, 3.0, at=0.0), 0.0) == 3.0


def test_run_fraction_and_progress_errors() -> None:
    assert [run_fraction(e, 5) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert run_fraction(0, 1) == 0.0  # a 1-epoch run is at its start
    with pytest.raises(ValueError, match="epoch 5 is not in a run of 5 epochs"):
        run_fraction(5, 5)
    assert lam_multiplier(LearnerConfig(), None) == 1.0  # constant needs no progress
    with pytest.raises(ValueError, match="lam_schedule=linear needs the run's progress"):
        lam_multiplier(_sched("linear"), None)
    with pytest.raises(ValueError, match=r"t=1.5 must be in \[0, 1\]"):
        lam_multiplier(_sched("cosine"), 1.5)


def _nft_inputs(seed: int = 0) -> dict:
    """Random NFT inputs for 4 edits on a 4x4 latent grid of 8 channels (packed [4, 16, 8])."""
    g = torch.Generator().manual_seed(seed)
    n, side, ch = 4, 4, 8

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    mask = torch.zeros(n, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1.0
    return dict(
        x_t=rnd(n, side * side, ch),
        t=torch.tensor([0.2, 0.4, 0.6, 0.8]),
        x0=rnd(n, side * side, ch),
        x_src=rnd(n, side * side, ch),
        v=rnd(n, side * side, ch),
        v_old=rnd(n, side * side, ch),
        v_ref=rnd(n, side * side, ch),
        r=torch.tensor([0.9, 0.1, 0.6, 0.3]),
        valid=torch.tensor([True, True, False, True]),
        weights=region_weights(mask, (side, side), erode_radius=0),
        unpack=lambda p: p.transpose(1, 2).reshape(p.shape[0], ch, side, side),
    )


def test_scheduled_loss_equals_the_loss_with_the_weights_scaled_by_hand() -> None:
    # tau_neg large: the negative hinge is on, so both weights matter
    cfg = LearnerConfig(lam_pos=0.3, lam_neg=0.7, tau_neg=100.0, kl_weight=1e-2)
    sched = dataclasses.replace(cfg, lam_schedule="cosine", lam_schedule_start=0.0, lam_schedule_end=2.0)
    inputs = _nft_inputs()
    base, base_m = nft_objective(cfg, **inputs)
    assert base_m["reg/pos"] > 0 and base_m["reg/neg"] > 0
    for t in (0.0, 0.3, 0.5, 1.0):
        m = lam_multiplier(sched, t)
        loss, metrics = nft_objective(sched, **inputs, lam_scale=m)
        by_hand = dataclasses.replace(cfg, lam_pos=cfg.lam_pos * m, lam_neg=cfg.lam_neg * m)
        loss_hand, metrics_hand = nft_objective(by_hand, **inputs)
        assert torch.equal(loss, loss_hand) and metrics == metrics_hand
        assert metrics["reg/pos"] == pytest.approx(m * base_m["reg/pos"], rel=1e-6, abs=1e-12)
        assert metrics["reg/neg"] == pytest.approx(m * base_m["reg/neg"], rel=1e-6, abs=1e-12)
    # constant: the objective's multiplier is exactly 1, the loss bit-identical to the unscheduled one
    nft = NFT(cfg)
    assert nft.at(0.7) == {"reg/lam_pos": 0.3, "reg/lam_neg": 0.7} and nft.lam_scale == 1.0
    assert torch.equal(nft_objective(cfg, **inputs, lam_scale=nft.lam_scale)[0], base)


@pytest.fixture
def one_thread():
    """2 busy cores: one intra-op thread is faster (as in tests/learner/test_learner.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_a_real_update_trains_and_logs_the_scheduled_weights(tmp_path: Path) -> None:
    policy = common.load(common.build_model(tmp_path / "model"))
    cfg = common.learner_config(lam_schedule="linear", lam_schedule_start=0.0, lam_schedule_end=2.0)
    learner = Learner(policy.cfg, cfg, policy=policy)  # type: ignore[attr-defined]
    batch = common.make_batch(policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="lam_schedule=linear needs the run's progress"):
        learner.update(batch, adv, valid)
    assert learner.step == 0
    first = learner.update(batch, adv, valid, progress=0.0)  # m = 0: no regularizer at all
    assert first["reg/lam_pos"] == 0.0 and first["reg/lam_neg"] == 0.0 and first["loss/reg"] == 0.0
    second = learner.update(batch, adv, valid, progress=0.25)  # m = 0.5 of lam 0.5
    assert second["reg/lam_pos"] == 0.25 and second["reg/lam_neg"] == 0.25 and second["loss/reg"] > 0
    skipped = learner.update(batch, adv, torch.zeros(4, dtype=torch.bool), progress=1.0)
    assert skipped["learner/skipped"] == 1.0 and skipped["reg/lam_pos"] == 1.0  # logged without a step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.lam_schedule=exp"], r"learner.lam_schedule must be one of \['constant', 'linear'"),
        (["learner.lam_schedule_start=-1"], "learner.lam_schedule_start"),
        (["learner.lam_schedule_end=.nan"], "learner.lam_schedule_end"),
        (["learner.lam_schedule_at=1.5"], "learner.lam_schedule_at"),
        (
            [*RAMP, "learner.use_reg=false"],
            "which this run does not use .* set learner.lam_schedule=constant",
        ),
        (
            [*RAMP, "learner.objective=grpo", "rollout.sampler=sde"],
            r"scales the nft objective's region regularizer, which this run does not use \(objective=grpo",
        ),
    ],
)
def test_bad_schedules_are_refused_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_schedule_that_cannot_move_warns_and_constant_ignores_start_end() -> None:
    with pytest.warns(UserWarning, match="start == lam_schedule_end == 1: the weights stay constant"):
        assert load_config(None, ["learner.lam_schedule=cosine"]).learner.lam_schedule == "cosine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(None, ["learner.lam_schedule_start=0"]).learner.lam_schedule == "constant"
        assert load_config(None, RAMP).learner.lam_schedule_start == 0.0


def test_resume_refuses_another_run_length_only_for_a_scheduled_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_00000001"  # check_config reads only RUN_DIR/config.yaml
    ckpt.mkdir(parents=True)
    for overrides, refused in ((RAMP, True), ([], False)):
        saved = load_config(None, [*overrides, "run.epochs=3"])
        (tmp_path / "run" / "config.yaml").write_text(dump_config(saved))
        check_config(saved, ckpt)
        longer = load_config(None, [*overrides, "run.epochs=4"])
        if refused:
            with pytest.raises(ResumeConfigError, match=r"run.epochs: 3 -> 4 \(learner.lam_schedule=linear"):
                check_config(longer, ckpt)
        else:
            check_config(longer, ckpt)  # constant weights: a run may be lengthened


def test_search_and_sweep_values_reach_the_config(tmp_path: Path) -> None:
    kind = parse_dimension("learner.lam_schedule=choice:constant,linear")
    start = parse_dimension("learner.lam_schedule_start=uniform:0:1")
    assert kind.args == ("constant", "linear") and start.args == (0.0, 1.0)
    search = Search(None, (), (kind, start), trials=2, out=tmp_path / "search")
    with pytest.warns(UserWarning, match="stay constant"):  # the upper corner: linear from 1 to 1
        search.check()  # loads the space's corners
    cfg = search.trial_config(search.setting({kind.key: "linear", start.key: 0.25}))
    assert cfg.learner.lam_schedule == "linear" and cfg.learner.lam_schedule_start == 0.25
    assert isinstance(cfg.learner.lam_schedule_start, float)
    cfg = search.trial_config(search.setting({kind.key: "constant", start.key: 0.0}))
    assert (cfg.learner.lam_schedule, cfg.learner.lam_schedule_start) == ("constant", 0.0)
    sweep = Sweep(
        None,
        ("learner.lam_schedule_start=0",),
        tuple(grid_settings(["learner.lam_schedule=constant,linear"])),
        1,
        tmp_path / "sweep",
    )
    assert sorted(c.learner.lam_schedule for c in sweep.trial_configs().values()) == ["constant", "linear"]


def test_the_model_card_states_a_schedule(tmp_path: Path) -> None:
    ramp = write_card(load_config(None, RAMP), tmp_path / "ramp", 3, 3).read_text()
    assert "lam_pos 0.02, lam_neg 0.02 (linear schedule of both weights, x0 -> x1 over the epochs" in ramp
    step = load_config(
        None, ["learner.lam_schedule=step", "learner.lam_schedule_end=0", "learner.lam_schedule_at=0.3"]
    )
    assert (
        "step schedule of both weights, x1 -> x0 at 0.3 of the run"
        in write_card(step, tmp_path / "s", 3, 3).read_text()
    )
    assert "schedule" not in write_card(load_config(None), tmp_path / "const", 3, 3).read_text()
