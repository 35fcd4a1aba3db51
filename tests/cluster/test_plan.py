"""`cocoedit plan`: the simulated activation memory is exact on known computations and linear in depth;
the roles' lines follow the config; a role that cannot fit is named and the command exits 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cocoedit.cluster import plan as P
from cocoedit.cluster.cli import main
from cocoedit.cluster.config import CONFIG_DIR, load_config
from cocoedit.cluster.plan import model as M
from cocoedit.cluster.plan import roles as R
from cocoedit.cluster.plan import simulate as S

GIB = 2**30


@pytest.fixture(autouse=True, scope="module")
def _own_simulation_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Simulate afresh (results are otherwise kept under $COCOEDIT_CACHE/plan)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COCOEDIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setattr(S, "_SIMULATED", {})
    yield
    mp.undo()


def test_simulated_peak_counts_live_tensors_once() -> None:
    def step() -> None:
        a = torch.empty(256, device="meta")  # 1 KiB
        b = a * 2  # 1 KiB: peak 2 KiB
        v = b.view(16, 16)  # a view: no new memory
        del a
        c = v + 1  # a was freed first: still 2 KiB
        del b, v, c
        torch.empty(1024, device="meta", dtype=torch.float64)  # 8 KiB alone

    assert P.simulated_peak(step) == 8192
    assert (
        P.simulated_peak(lambda: torch.empty(3, 4, device="meta") @ torch.empty(4, 5, device="meta"))
        == 3 * 4 * 4 + 4 * 5 * 4 + 3 * 5 * 4
    )


def test_attention_is_counted_without_a_score_matrix() -> None:
    q = torch.empty(1, 2, 4096, 64, device="meta")

    def step() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)

    # the output and the float32 log-sum-exp; a [4096, 4096] score matrix would add 128 MiB
    assert P.simulated_peak(step) == q.numel() * 4 + 2 * 4096 * 4


@pytest.fixture(scope="module")
def tiny_model() -> P.PolicyModel:
    from cocoedit.actors.policies.builders import tiny_spec

    spec = tiny_spec("flux_kontext", num_layers=2, num_single_layers=2)
    return P.PolicyModel("flux_kontext", {"transformer": 1}, spec.transformer, spec.vae, "test")


def test_activations_extrapolated_per_block_equal_a_direct_simulation(tiny_model: P.PolicyModel) -> None:
    policy = load_config(None, ["policy.lora_rank=4"]).policy
    extrapolated = P.transformer_activation_bytes(
        tiny_model, policy, 2, 32, 8, grad=True, checkpointing=False
    )
    blocks = {"num_layers": 2, "num_single_layers": 2}
    transformer = M._meta_transformer(tiny_model, policy, blocks, torch.float32)
    transformer.train()
    inputs = M._transformer_inputs(tiny_model, 2, 32, 8, torch.float32)

    def step() -> None:
        transformer(**inputs)[0].float().square().mean().backward()

    assert extrapolated == pytest.approx(P.simulated_peak(step), rel=1e-6)


def test_judge_kv_cache_by_hand() -> None:
    cfg = load_config(CONFIG_DIR / "flux_kontext_8gpu.yaml")  # Qwen2.5-VL-32B, TP 2, utilization 0.85
    role = P.judge_plan(cfg, 80 * GIB)
    params, layers, kv_heads, head_dim = P.JUDGES["32B"]
    weights = params * 2 / 2
    kv = 0.85 * 80 * GIB - weights - P.VLLM_RESERVE_BYTES
    per_token = 2 * layers * kv_heads * head_dim * 2 / 2
    assert role.memory["weights / 2 GPU(s)"] == weights
    assert f"KV cache holds {kv / per_token:,.0f} tokens" in " ".join(role.notes)
    assert role.fits
    big = ["rewards.mllm.model_path=/models/Qwen2.5-VL-72B-Instruct", "rewards.mllm.tensor_parallel_size=1"]
    role = P.judge_plan(load_config(CONFIG_DIR / "flux_kontext_8gpu.yaml", big), 80 * GIB)
    assert role.params == {"judge": int(P.JUDGES["72B"][0])}
    assert not role.fits and "holds 0 tokens, fewer than max_model_len=4096" in role.problems[-1]


def test_unknown_judge_is_a_problem_not_a_guess() -> None:
    cfg = load_config(CONFIG_DIR / "flux_kontext_8gpu.yaml", ["rewards.mllm.model_path=/models/my-judge"])
    assert "cannot size the judge" in P.judge_plan(cfg, 80 * GIB).problems[0]


def test_plan_cli_names_the_roles_that_cannot_fit(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_roles = [
        f"policy.model_path={tiny_dir}",
        "rollout.gpus_per_worker=1",
        "learner.gpus_per_rank=1",
        "data.n_items=1",
        "data.group_size=2",
    ]
    assert main(["plan", "--gpu-memory", "80", *gpu_roles]) == 0
    out = capsys.readouterr().out
    assert "rollout worker x1 (1 GPU + 0.5 CPU each)" in out and "fits" in out
    assert "reward service pixel replica x1" in out
    assert main(["plan", "--gpu-memory", "0.01", *gpu_roles]) == 1
    err = capsys.readouterr().err
    assert "rollout worker cannot fit" in err and "learner rank cannot fit" in err
    assert "more than 0.01 GiB" in err


def test_learner_holds_what_it_loads_and_zero_shards_the_optimizer(tiny_dir: Path) -> None:
    cfg = load_config(None, [f"policy.model_path={tiny_dir}", "learner.world_size=4", "learner.zero_stage=2"])
    model = P.policy_model("flux_kontext", str(tiny_dir))
    full = P.learner_plan(cfg, model, None, tuple(model.params))
    lean = P.learner_plan(cfg, model, None, ("transformer",))
    assert set(lean.params) == {"transformer"}
    dropped = sum(n for k, n in model.params.items() if k != "transformer") * 4
    assert full.total - lean.total == pytest.approx(dropped)
    key = "optimizer states, ZeRO-2 over 4 rank(s)"
    zero0 = P.learner_plan(
        load_config(None, [f"policy.model_path={tiny_dir}", "learner.zero_stage=0"]),
        model,
        None,
        ("transformer",),
    )
    lora = R._lora_count(model, cfg.policy)
    assert (
        full.memory[key] == lora * (2 * 4 + 4 + 4) / 4
    )  # moments + master + gradient partition, over 4 ranks
    assert zero0.memory["optimizer states, ZeRO-0 over 1 rank(s)"] == lora * 2 * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cocoedit.actors.policies.tiny import build_tiny_model

    return build_tiny_model(
        "flux_kontext", tmp_path_factory.mktemp("plan_tiny"), num_layers=1, num_single_layers=1
    )


def test_a_run_logs_its_plan(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, [f"policy.model_path={tiny_dir}", "data.n_items=1", "data.group_size=2"])
    with caplog.at_level("INFO", logger="cocoedit.cluster.plan"):
        P.log_plan(cfg)
    text = caplog.text
    assert "memory plan" in text and "rollout worker x1 (0.5 CPU each)" in text and "learner rank x1" in text
    assert "host memory" in text  # no GPU here: estimates only


@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit"])
def test_plan_counts_what_each_role_loads(family: str, tmp_path: Path) -> None:
    from cocoedit.actors.policies import load_policy
    from cocoedit.actors.policies.tiny import build_tiny_model

    path = build_tiny_model(family, tmp_path / family, num_layers=1, num_single_layers=1)
    cfg = load_config(None, [f"policy.family={family}", f"policy.model_path={path}", "policy.dtype=float32"])
    model = P.policy_model(family, str(path))
    for parts in ("all", "transformer"):
        policy = load_policy(cfg.policy, parts=parts)  # type: ignore[arg-type]
        held = {
            k: sum(p.numel() for n, p in m.named_parameters() if "lora_" not in n)
            for k, m in policy.components().items()
        }
        assert {k: model.params[k] for k in P.role_components(model, parts)} == held


# ----------------------------------------------------------------------------------------------------
# the time plan


def test_flops_are_counted_exactly_on_known_computations() -> None:
    from cocoedit.cluster.plan.work import counted_flops

    lin = torch.nn.Linear(64, 32, bias=False, device="meta").requires_grad_(False)
    x = torch.empty(8, 64, device="meta", requires_grad=True)
    # forward 2*8*64*32; backward: only the input gradient (the weight is frozen), as much again
    assert counted_flops(lambda: lin(x).sum().backward()) == 2 * (2 * 8 * 64 * 32)
    q = torch.empty(1, 2, 16, 8, device="meta")
    # attention as its math: scores and the weighted sum, 2 * 2 * heads * L * L * D
    assert (
        counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
        == 4 * 2 * 16 * 16 * 8
    )


def _direct_flops(model: P.PolicyModel, policy: object, grad: bool) -> float:
    from cocoedit.cluster.plan.work import counted_flops

    transformer = M._meta_transformer(model, policy, {"num_layers": 2, "num_single_layers": 2}, torch.float32)
    transformer.train(grad)
    inputs = M._transformer_inputs(model, 1, 32, 8, torch.float32)

    def step() -> None:
        with torch.set_grad_enabled(grad):
            out = transformer(**inputs)[0]
            if grad:
                out.float().square().mean().backward()

    return counted_flops(step)


def test_transformer_flops_extrapolated_per_block_equal_a_direct_count(tiny_model: P.PolicyModel) -> None:
    from cocoedit.cluster.plan.work import transformer_flops

    policy = load_config(None, ["policy.lora_rank=4"]).policy
    extrapolated = transformer_flops(tiny_model, policy, 32, 8, grad=True, checkpointing=False)
    assert extrapolated == pytest.approx(_direct_flops(tiny_model, policy, grad=True), rel=1e-9)
    forward = transformer_flops(tiny_model, policy, 32, 8, grad=False, checkpointing=False)
    recomputed = transformer_flops(tiny_model, policy, 32, 8, grad=True, checkpointing=True)
    plain = transformer_flops(tiny_model, policy, 32, 8, grad=True, checkpointing=False)
    assert recomputed > plain > 1.5 * forward  # recomputation adds about one forward


GPU_RUN = ["rollout.gpus_per_worker=1", "learner.gpus_per_rank=1", "data.n_items=2", "data.group_size=4"]


def test_time_plan_turns_flops_into_seconds_and_a_critical_path(tiny_dir: Path) -> None:
    from cocoedit.cluster.plan.time import GPUS, time_plan

    cfg = load_config(None, [f"policy.model_path={tiny_dir}", *GPU_RUN, "rollout.batch_size=4"])
    model = P.policy_model("flux_kontext", str(tiny_dir))
    tp = time_plan(cfg, model, None, "a100", None, 0.5)
    roles = {r.work.role: r for r in tp.roles}
    peak = GPUS["a100"].bf16_tflops * 1e12
    rollout, learner = roles["rollout"], roles["learner"]
    assert rollout.seconds == pytest.approx(rollout.work.flops / (1 * peak * 0.5))
    assert learner.seconds == pytest.approx(learner.work.flops / (1 * peak * 0.5))
    pixel = roles["pixel service"]
    score = pixel.seconds  # no judge in the tiny config: the pixel service scores alone
    assert tp.sample_stage_s == pytest.approx(
        max(rollout.seconds, score) + score / 2
    )  # 8 edits, batches of 4
    assert tp.serial_s == pytest.approx(tp.sample_stage_s + learner.seconds)
    assert tp.overlap_s == pytest.approx(max(tp.sample_stage_s, learner.seconds))
    assert tp.epoch_s == tp.serial_s and tp.edits_per_s == pytest.approx(8 / tp.serial_s)  # max_staleness 0
    assert learner.busy == pytest.approx(learner.seconds / tp.serial_s)
    stale = time_plan(
        load_config(None, [f"policy.model_path={tiny_dir}", *GPU_RUN, "rollout.max_staleness=1"]), model, None
    )
    assert stale.epoch_s == pytest.approx(stale.overlap_s) and stale.overlap_s < stale.serial_s
    # NFT with a KL term: per trained timestep a forward + backward and two no-grad forwards (old, ref)
    steps = cfg.data.n_items * cfg.data.group_size * cfg.learner.train_timesteps
    assert any(f"{steps} x 2" in line for line in learner.work.lines)


def test_best_split_uses_the_same_gpus_and_only_splits_that_fit(tiny_dir: Path) -> None:
    from cocoedit.cluster.plan.time import best_split, time_plan

    cfg = load_config(
        None, [f"policy.model_path={tiny_dir}", *GPU_RUN, "rollout.num_workers=3", "learner.world_size=1"]
    )
    model = P.policy_model("flux_kontext", str(tiny_dir))
    split, tried = best_split(cfg, model, None, 80 * GIB, "h100", None, 0.4)
    assert split is not None and tried == 3  # (1, 3), (2, 2), (3, 1): every split of 4 GPUs
    assert split.workers + split.ranks == 4
    assert split.plan.edits_per_s >= time_plan(cfg, model, None).edits_per_s
    assert best_split(cfg, model, None, 1024, "h100", None, 0.4)[0] is None  # nothing fits 1 KiB


def test_plan_cli_prints_the_time_plan_on_a_named_gpu(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--gpu", "l40s", "--mfu", "0.5", f"policy.model_path={tiny_dir}", *GPU_RUN]) == 0
    out = capsys.readouterr().out
    assert "time plan: one epoch of 8 edits on l40s (362.05 TFLOPS dense bf16" in out and "at MFU 0.5" in out
    assert "of 48 GiB" in out  # the GPU's memory when --gpu-memory is not given
    assert "critical path" in out and "suggested split of the same GPUs" in out
    assert main(["plan", f"policy.model_path={tiny_dir}", "data.n_items=2", "data.group_size=4"]) == 0
    out = capsys.readouterr().out  # the tiny config's roles ask no GPU: FLOPs, but no seconds
    assert (
        "rollout (0 GPUs):" in out
        and "asks no GPU: seconds not modelled" in out
        and "no critical path" in out
    )
    assert main(["plan", "--mfu", "1.5", f"policy.model_path={tiny_dir}"]) == 2
    assert "--mfu=1.5 must be in (0, 1]" in capsys.readouterr().err
