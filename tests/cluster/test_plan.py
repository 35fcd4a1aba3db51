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
