"""The DeepSpeed Learner on the tiny FLUX-Kontext policy (CPU): one step per update, the soft update
of `old`, 2 ranks == 1 rank, save/kill/load/continue, Flow-GRPO, and the errors it raises."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from cocoedit.actors.samplers import sde_step
from cocoedit.learner.checkpoint import COMPLETE, checkpoint_dir, latest_checkpoint
from cocoedit.learner.learner import Learner
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
            v = policy.velocity(x, sig[j].expand(4), batch.condition)
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
