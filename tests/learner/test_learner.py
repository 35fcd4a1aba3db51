"""The DeepSpeed Learner on the tiny FLUX-Kontext policy (CPU): one step per update, the soft update
of `old`, 2 ranks == 1 rank, save/kill/load/continue, Flow-GRPO, and the errors it raises."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from cocoedit.actors.samplers import sde_step
from cocoedit.actors.types import RolloutBatch
from cocoedit.learner.checkpoint import COMPLETE, checkpoint_dir, latest_checkpoint
from cocoedit.learner.config import OBJECTIVES
from cocoedit.learner.learner import Learner
from cocoedit.learner.objectives import MicroBatch, Objective, Views
from cocoedit.loopback import free_port
from tests.learner import common


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return common.build_model(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(autouse=True)
def one_thread():
    """2 busy cores: one intra-op thread is several times faster than two here (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _learner(model_dir: Path, **cfg: object) -> Learner:
    policy = common.load(model_dir)
    return Learner(policy.cfg, common.learner_config(**cfg), policy=policy)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# two DeepSpeed ranks (two processes, gloo on 127.0.0.1) == one rank; first in the file: see `method`


SHARDS = [[0, 1, 2], [3]]  # unequal on purpose: rank 1 pads with zero-weight passes (ZeRO-2 collectives)
UPDATES = 2


def _rank_main(rank: int, port: int, model_dir: str, data_path: str, out_dir: str, zero_stage: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    policy = common.load(model_dir)
    batch, adv, valid = torch.load(data_path, weights_only=False)
    cfg = common.learner_config(zero_stage=zero_stage)
    learner = Learner(policy.cfg, cfg, rank=rank, world_size=2, policy=policy)  # type: ignore[attr-defined]
    shard = SHARDS[rank]
    metrics = [learner.update(batch.select(shard), adv[shard], valid[shard]) for _ in range(UPDATES)]
    torch.save(
        {
            "default": policy.lora_state_dict("default"),
            "old": policy.lora_state_dict("old"),
            "metrics": metrics,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.parametrize("zero_stage", [2, pytest.param(0, marks=pytest.mark.slow)])
def test_two_ranks_equal_one_rank(model_dir: Path, tmp_path: Path, zero_stage: int) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    batch = common.make_batch(common.load(model_dir))
    adv, valid = torch.tensor([1.2, -0.7, 0.4, -0.9]), torch.ones(4, dtype=torch.bool)
    torch.save((batch, adv, valid), tmp_path / "data.pt")
    port = free_port()
    # fork reuses this process's imports (seconds instead of minutes on a busy machine); a process that
    # already joined a process group cannot fork ranks, so spawn then
    method = "spawn" if dist.is_available() and dist.is_initialized() else "fork"
    ctx = mp.start_processes(
        _rank_main,
        args=(port, str(model_dir), str(tmp_path / "data.pt"), str(tmp_path), zero_stage),
        nprocs=2,
        join=False,
        start_method=method,
    )
    try:
        deadline = time.monotonic() + 600
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                raise TimeoutError("the two DeepSpeed ranks did not finish in 600 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        common.remove_shm_files(port)
    single = _learner(
        model_dir, zero_stage=zero_stage
    )  # after the ranks: this process joins its own 1-rank group
    single_metrics = [single.update(batch, adv, valid) for _ in range(UPDATES)]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for adapter in ("default", "old"):
        assert common.lora_max_diff(r0[adapter], r1[adapter]) == 0.0  # ranks hold identical weights
        assert common.lora_max_diff(r0[adapter], single.policy.lora_state_dict(adapter)) < 1e-6
    for u in range(UPDATES):
        assert r0["metrics"][u]["learner/grad_norm"] == pytest.approx(
            single_metrics[u]["learner/grad_norm"], rel=1e-5
        )
        assert r0["metrics"][u]["loss/policy"] == pytest.approx(single_metrics[u]["loss/policy"], rel=1e-5)
        assert r0["metrics"][u]["nft/r_mean"] == pytest.approx(single_metrics[u]["nft/r_mean"], rel=1e-6)
        assert r0["metrics"][u]["learner/passes"] == 2 * 2  # rank 0: 2 micro-batches x 2 timesteps


def test_update_steps_once_and_soft_updates_old(model_dir: Path) -> None:
    learner = _learner(model_dir)
    batch = common.make_batch(learner.policy)
    theta0 = learner.policy.lora_state_dict("default")
    assert common.lora_max_diff(theta0, learner.policy.lora_state_dict("old")) == 0.0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    m = learner.update(batch, adv, torch.tensor([True, True, True, True]))
    assert learner.step == 1 and learner.engine.global_steps == 1
    theta1 = learner.policy.lora_state_dict("default")
    assert common.lora_max_diff(theta0, theta1) > 1e-5  # one AdamW step of lr 3e-4 moved the LoRA
    # theta_old <- d theta_old + (1 - d) theta with d = min(0.001 * 1, 0.5)
    d = 0.001
    expected_old = {k: d * theta0[k] + (1 - d) * theta1[k] for k in theta0}
    assert common.lora_max_diff(expected_old, learner.sampling_weights()) < 1e-7
    assert m["learner/ema_decay"] == pytest.approx(d)
    assert m["learner/passes"] == 2 * 2  # 2 micro-batches x 2 timesteps
    assert m["learner/n_valid"] == 4 and m["nft/valid_fraction"] == 1.0
    assert {
        "loss/policy",
        "loss/reg",
        "loss/kl",
        "reg/hinge_pos_active",
        "nft/r_mean",
        "learner/grad_norm",
    } <= m.keys()
    assert m["time/update_s"] >= m["time/forward_backward_s"] > 0
    # invalid edits drop out; all invalid -> no step at all
    m = learner.update(batch, adv, torch.tensor([True, False, False, False]))
    assert m["learner/n_valid"] == 1 and m["learner/passes"] == 2 and learner.step == 2
    before = learner.policy.lora_state_dict("default")
    m = learner.update(batch, adv, torch.zeros(4, dtype=torch.bool))
    assert m["learner/skipped"] == 1.0 and learner.step == 2
    assert common.lora_max_diff(before, learner.policy.lora_state_dict("default")) == 0.0


def test_update_refuses_bad_input(model_dir: Path) -> None:
    learner = _learner(model_dir, train_timesteps=9)
    batch = common.make_batch(learner.policy, num_steps=4)
    with pytest.raises(ValueError, match="train_timesteps=9 exceeds the rollout's 4 steps"):
        learner.update(batch, torch.zeros(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one per edit"):
        learner.update(batch, torch.zeros(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="zero_stage=3"):
        Learner(learner.policy_cfg, common.learner_config(zero_stage=3), policy=learner.policy)


def test_a_non_finite_loss_takes_no_step(model_dir: Path) -> None:
    """NaN latents (as a one-step Qwen-Image schedule made them) stop the update before the optimizer
    step, naming the loss; theta and theta_old are untouched."""
    learner = _learner(model_dir)
    batch = common.make_batch(learner.policy)
    batch.x0[1] = float("nan")
    before = {a: learner.policy.lora_state_dict(a) for a in ("default", "old")}
    with pytest.raises(FloatingPointError, match=r"non-finite loss/.*no optimizer step was taken"):
        learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool))
    for adapter, state in before.items():
        assert common.lora_max_diff(state, learner.policy.lora_state_dict(adapter)) == 0.0


def test_save_kill_load_continue_is_bit_exact(model_dir: Path, tmp_path: Path) -> None:
    batch_policy = common.load(model_dir)
    batch = common.make_batch(batch_policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.3, -0.3]), torch.ones(4, dtype=torch.bool)

    a = _learner(model_dir, warmup_steps=3)
    a.update(batch, adv, valid)
    torch.manual_seed(123)  # the global RNG state is part of the checkpoint
    saved = a.save(tmp_path, extra_state={"banned": ["item9"], "policy_version": 1}, keep_last=2)
    assert saved == checkpoint_dir(tmp_path, 1) and (saved / COMPLETE).is_file()
    rng_after_save = torch.rand(3)
    for _ in range(3):
        a.update(batch, adv, valid)
    # a save killed half-way leaves only a temp dir / a dir without COMPLETE: never picked
    (tmp_path / "checkpoints" / ".tmp_step_00000009").mkdir()
    (tmp_path / "checkpoints" / "step_00000008").mkdir()
    assert latest_checkpoint(tmp_path) == saved
    del a  # "kill": a fresh learner in the same state as a restarted process

    b = _learner(model_dir, warmup_steps=3)
    extra = b.load(tmp_path)
    assert extra == {"banned": ["item9"], "policy_version": 1} and b.step == 1
    assert torch.equal(torch.rand(3), rng_after_save)
    metrics = [b.update(batch, adv, valid) for _ in range(3)]
    assert metrics[-1]["learner/lr"] == pytest.approx(3e-4)  # warm-up (3 steps) state was restored

    c = _learner(model_dir, warmup_steps=3)  # uninterrupted run
    for _ in range(4):
        c.update(batch, adv, valid)
    for adapter in ("default", "old"):
        assert (
            common.lora_max_diff(b.policy.lora_state_dict(adapter), c.policy.lora_state_dict(adapter)) == 0.0
        )
    # keep_last: saving steps 4, 5 removes step 1
    c.save(tmp_path, {}, keep_last=2)
    c.update(batch, adv, valid)
    c.save(tmp_path, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if (p / COMPLETE).exists())
    assert names == ["step_00000004", "step_00000005"]


def test_grpo_on_policy_ratio_is_one(model_dir: Path) -> None:
    learner = _learner(model_dir, objective="grpo", grpo_kl_beta=0.01)
    policy = learner.policy
    batch = common.make_batch(policy, num_steps=4)
    # an SDE trajectory sampled with theta_old, log-probs by the same pure step function
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch.x0.shape, generator=g)
    traj, lps = [x], []
    sig = batch.sigmas
    with torch.no_grad(), policy.adapter("old"):
        for j in range(4):
            v = policy.velocity(x, sig[j].expand(4), batch.edit_condition([0, 1, 2, 3]))
            x, lp, _, _ = sde_step(x, v, sig[j], sig[j + 1], 0.7, generator=g, sigma_max=sig[1])
            traj.append(x)
            lps.append(lp)
    batch.trajectory, batch.log_probs = torch.stack(traj, 1), torch.stack(lps, 1)
    before = policy.lora_state_dict("default")
    m = learner.update(batch, torch.tensor([1.0, -1.0, 2.0, -2.0]), torch.ones(4, dtype=torch.bool))
    assert m["grpo/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m["grpo/clip_fraction"] == 0.0 and m["kl/grpo"] == pytest.approx(0.0, abs=1e-6)
    assert common.lora_max_diff(before, policy.lora_state_dict("default")) > 1e-5


def test_regularizer_lowers_keep_region_error(model_dir: Path) -> None:
    """Fixed synthetic rewards, same data and seeds: with lam_pos > 0 the positive branch's keep-region
    error d_pos (measured on fixed probes) ends lower than with lam_pos = 0 (bench/learner_update.py regularizer
    runs the longer version)."""
    g = torch.Generator().manual_seed(7)
    adv, valid = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.ones(4, dtype=torch.bool)
    final, start = {}, None
    for lam in (0.0, 5.0):
        learner = _learner(model_dir, lam_pos=lam, lam_neg=0.0, lr=1e-3, kl_weight=0.0)
        batch = common.make_batch(learner.policy)
        if start is None:
            probes = [(t, torch.randn(batch.x0.shape, generator=g)) for t in (0.3, 0.6, 0.9)]
            start = common.keep_error(learner.policy, batch, probes)
        for _ in range(6):
            learner.update(batch, adv, valid)
        final[lam] = common.keep_error(learner.policy, batch, probes)
    print(f"keep-region error: start {start:.5f}, lam_pos=0 {final[0.0]:.5f}, lam_pos=5 {final[5.0]:.5f}")
    assert final[5.0] < start, (start, final)
    assert final[5.0] < final[0.0], (start, final)


# --------------------------------------------------------------------------------------------------
# bf16 base: float32 LoRA masters, a soft update that does not round away


def _adam_state(engine, param: torch.nn.Parameter, key: str) -> torch.Tensor:
    """The optimizer's float32 state of one LoRA parameter (ZeRO-1/2 partitions or plain AdamW)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    state = safe_get_full_optimizer_state(param, key)
    if state is None:
        state = engine.optimizer.state[param][key]
    return state.detach().double().cpu().view(param.shape)


def _as64(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in state.items()}


def _ulp_error(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> float:
    """max |actual - expected| in float32 ulps of the operands (the larger of |expected| and |start|)."""
    eps = torch.finfo(torch.float32).eps
    return max(
        (
            (actual[k].double() - expected[k]).abs()
            / (eps * torch.maximum(expected[k].abs(), start[k].double().abs()))
        )
        .max()
        .item()
        for k in expected
    )


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_base_keeps_small_updates_and_the_soft_update(model_dir: Path, zero_stage: int) -> None:
    """bf16 resolves ~1/256 of a weight: an Adam step of lr = 1e-5 on weights of ~0.3 and a soft update
    with d = 0.999 change them by ~1/30000 and were lost entirely before the adapters were float32
    (bench/learner_update.py bf16 measures it). Now theta after one step equals the update computed in
    float64 from the optimizer's state, and theta_old after soft updates with d = 0.5 and d = 0.999 the
    float64 blend, both within 2 float32 ulps."""
    policy = common.load(model_dir, dtype="bfloat16")
    g = torch.Generator().manual_seed(0)
    start = {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in policy.lora_state_dict("default").items()}
    policy.load_lora_state_dict(start, "default")  # B != 0: every weight gets a gradient
    policy.load_lora_state_dict(start, "old")
    lr = 1e-5
    # d = min(0.5 * step, 0.999): 0.5 after the first update, 0.999 after the second
    learner = Learner(
        policy.cfg,  # type: ignore[attr-defined]
        common.learner_config(zero_stage=zero_stage, lr=lr, ema_rate=0.5, ema_max=0.999, train_timesteps=1),
        policy=policy,
    )
    assert learner.views.autocast == torch.bfloat16
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    assert {v.dtype for v in learner.sampling_weights().values()} == {torch.float32}
    batch = common.make_batch(policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool)
    for d in (0.5, 0.999):
        # theta_old well away from theta, so that (1 - d)(theta - theta_old) is many float32 ulps
        old0 = {
            k: v + 0.01 * torch.randn(v.shape, generator=g)
            for k, v in policy.lora_state_dict("default").items()
        }
        policy.load_lora_state_dict(old0, "old")
        theta0 = _as64(policy.lora_state_dict("default"))
        m = learner.update(batch, adv, valid)
        assert m["learner/ema_decay"] == pytest.approx(d)
        theta1 = _as64(policy.lora_state_dict("default"))
        if d == 0.5:  # the first AdamW step: m_hat / sqrt(v_hat) from the optimizer's own state
            b1, b2 = learner.cfg.betas
            expected = {}
            for (k, t0), p in zip(theta0.items(), policy.trainable_parameters(), strict=True):
                m1 = _adam_state(learner.engine, p, "exp_avg") / (1 - b1)
                v1 = _adam_state(learner.engine, p, "exp_avg_sq") / (1 - b2)
                expected[k] = t0 * (1 - lr * learner.cfg.weight_decay) - lr * m1 / (v1.sqrt() + 1e-8)
            step = max((expected[k] - theta0[k]).abs().max().item() for k in theta0)
            assert step == pytest.approx(lr, rel=1e-3)
            assert _ulp_error(theta1, expected, theta0) <= 2.0
        blend = {k: d * old0[k].double() + (1 - d) * theta1[k] for k in theta1}
        change = min((blend[k] - old0[k].double()).abs().max().item() for k in blend)
        assert change > 1e-6  # >> a float32 ulp of these weights, ~100x below a bf16 one
        assert _ulp_error(policy.lora_state_dict("old"), blend, old0) <= 2.0


# --------------------------------------------------------------------------------------------------
# lean roles, conditions once per group, the objective registry


def test_learner_rank_loads_only_the_transformer(model_dir: Path) -> None:
    lean = Learner(common.policy_config(model_dir), common.learner_config())  # as a LearnerRank builds it
    assert set(lean.policy.components()) == {"transformer"}
    pipe = lean.policy.pipe  # type: ignore[attr-defined]
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None and pipe.vae is None
    with pytest.raises(RuntimeError, match="parts='transformer'"):
        lean.policy.encode_condition(["x"], torch.zeros(1, 3, common.SIZE, common.SIZE, dtype=torch.uint8))
    full = _learner(model_dir)  # a rollout worker's policy: everything
    assert set(full.policy.components()) == {"text_encoder", "text_encoder_2", "vae", "transformer"}
    # the lean learner trains exactly like one holding the whole pipeline
    batch = common.make_batch(full.policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool)
    m_lean, m_full = lean.update(batch, adv, valid), full.update(batch, adv, valid)
    assert m_lean["loss/total"] == m_full["loss/total"]
    for adapter in ("default", "old"):
        assert (
            common.lora_max_diff(lean.policy.lora_state_dict(adapter), full.policy.lora_state_dict(adapter))
            == 0
        )


def test_conditions_once_per_group_train_like_one_per_edit(model_dir: Path) -> None:
    """A batch with one condition row per group gives the losses and weights of the same batch with one
    row per edit (what workers sent before); micro-batches of 4 straddle the groups of 2."""
    grouped, flat = _learner(model_dir, micro_batch_size=4), _learner(model_dir, micro_batch_size=4)
    batch = common.make_batch(grouped.policy, n=6)
    per_edit = batch.per_edit()
    assert len(batch.condition) == 3 and len(per_edit.condition) == 6
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2]), torch.tensor([1, 1, 0, 1, 1, 1]).bool()
    for _ in range(2):
        m_group, m_flat = grouped.update(batch, adv, valid), flat.update(per_edit, adv, valid)
        for key in ("loss/total", "loss/policy", "loss/reg", "loss/kl", "learner/grad_norm"):
            assert m_group[key] == pytest.approx(m_flat[key], rel=1e-6, abs=1e-9), key
    for adapter in ("default", "old"):
        assert (
            common.lora_max_diff(
                grouped.policy.lora_state_dict(adapter), flat.policy.lora_state_dict(adapter)
            )
            < 1e-7
        )


class BlendRegression(Objective):
    """A toy objective: from the midpoint of source and edit latents, predict the edit (x0) in one step."""

    def passes(self, batch: RolloutBatch) -> int:
        return 1

    def loss(self, views: Views, batch: RolloutBatch, mb: MicroBatch, j: int) -> tuple[torch.Tensor, dict]:
        x_t = 0.5 * (mb.x0 + mb.x_src)
        t = torch.full((len(mb.idx),), 0.5, device=mb.x0.device)
        x0_hat = x_t - 0.5 * views.velocity("default", x_t, t, mb.cond)
        loss = ((x0_hat - mb.x0) ** 2).mean()
        return loss, {"loss/total": loss.item()}


def test_a_toy_objective_trains_with_one_registry_line(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(OBJECTIVES, "blend", f"{__name__}:BlendRegression")  # the one registry line
    learner = _learner(model_dir, objective="blend", micro_batch_size=4, lr=1e-4)
    policy = learner.policy
    batch = common.make_batch(policy)
    every = list(range(len(batch)))

    @torch.no_grad()
    def blend_loss() -> float:
        x_t = 0.5 * (batch.x0 + batch.edit_source_latents(every))
        v = policy.velocity(x_t, torch.full((len(batch),), 0.5), batch.edit_condition(every))
        return ((x_t - 0.5 * v - batch.x0) ** 2).mean().item()

    before = blend_loss()
    m = learner.update(batch, torch.zeros(4), torch.ones(4, dtype=torch.bool))
    assert learner.step == 1 and m["learner/passes"] == 1
    assert m["loss/total"] == pytest.approx(before, rel=1e-5)
    assert blend_loss() < before  # one AdamW step descended the toy loss
    with pytest.raises(ValueError, match=r"learner.objective='nope' is unknown; expected one of \['blend'"):
        Learner(learner.policy_cfg, common.learner_config(objective="nope"), policy=policy)
