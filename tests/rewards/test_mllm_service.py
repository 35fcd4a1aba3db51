"""The vLLM-backed MLLM judge as a real gRPC service on 127.0.0.1, with the tiny Qwen2.5-VL judge.

One module-scoped server: the tiny judge is built in a tmp dir and vLLM's async engine started once
(tens of seconds on 2 busy cores); every test below talks to that one engine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cocoedit.rewards.base import DecodedEdit
from cocoedit.rewards.config import ClientConfig, JudgeConfig, ServerConfig
from tests.rewards.conftest import groups_of, make_edits, on_the_wire


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cocoedit.rewards.tiny_judge import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny_judge"))


@pytest.fixture(scope="module")
def judge_cfg(judge_dir: Path) -> JudgeConfig:
    return JudgeConfig(
        model_path=str(judge_dir),
        score_mode="logits",
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.1,  # on CPU this reserves host memory
        image_size=64,
        seed=0,
        generate_timeout_s=120.0,
    )


@pytest.fixture(scope="module")
def judge_server(judge_cfg: JudgeConfig) -> Iterator:
    from cocoedit.rewards.hosting import BackgroundServer
    from cocoedit.rewards.mllm import MLLMJudge

    with BackgroundServer(MLLMJudge(judge_cfg), ServerConfig(grace_s=1.0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(judge_server) -> Iterator:  # type: ignore[no-untyped-def]
    from cocoedit.rewards.client import RewardClient

    cfg = ClientConfig(timeout_s=180.0, retries=1, backoff_s=0.05, ready_timeout_s=5.0, batch_edits=16)
    with RewardClient([judge_server.address], cfg, "mllm") as c:
        c.wait_ready()
        yield c


def _decoded(n: int, seed: int) -> list[DecodedEdit]:
    rng = np.random.default_rng(seed)
    return [
        DecodedEdit(
            edit_id=f"d{i}",
            group_id="g",
            policy_version=0,
            instruction="paint the square blue",
            source_image=rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            edited_image=rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            edit_mask=None,
        )
        for i in range(n)
    ]


def test_tiny_judge_directory_is_small_complete_and_cached(judge_dir: Path) -> None:
    from transformers import AutoTokenizer

    from cocoedit.rewards.judge import build_messages, digit_token_ids
    from cocoedit.rewards.tiny_judge import build_tiny_judge

    files = {p.name for p in judge_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert sum(p.stat().st_size for p in judge_dir.iterdir()) / 2**20 < 10  # MB
    mtime = (judge_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_judge(judge_dir) == judge_dir  # complete: skipped, not rebuilt
    assert (judge_dir / "model.safetensors").stat().st_mtime_ns == mtime

    tok = AutoTokenizer.from_pretrained(str(judge_dir))
    assert [tok.decode([i]) for i in digit_token_ids(tok)] == ["0", "1", "2", "3", "4", "5"]
    text = tok.apply_chat_template(
        build_messages("add a hat", "cocoedit-v1"), tokenize=False, add_generation_prompt=True
    )
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text.count(image) == 2
    assert text.index("Source image:") < text.index(image) < text.index("Edited image:")
    assert text.index("Edited image:") < text.rindex(image) < text.index("add a hat")
    assert text.endswith("<|im_start|>assistant\n")


def test_scores_through_the_client_are_in_unit_interval(client) -> None:  # type: ignore[no-untyped-def]
    info = client.info()
    assert info.service == "mllm" and info.score_name == "mllm"
    assert info.settings["prompt_version"] == "cocoedit-v1"
    assert info.settings["score_mode"] == "logits"
    assert info.settings["image_order"] == "source,edited"

    outcomes = client.score(make_edits(6, h=48, w=48, seed=1))
    assert [o.edit_id for o in outcomes] == [f"e{i}" for i in range(6)]
    for o in outcomes:
        assert o.error is None, o.error
        assert 0.0 <= o.score <= 1.0
        assert o.score == pytest.approx(o.components["expected_score"] / 5)
        assert 0.0 < o.components["p_top"] <= 1.0
        assert 1 <= o.components["digits_present"] <= 6


def test_logits_mode_is_deterministic_and_batch_independent(client) -> None:  # type: ignore[no-untyped-def]
    edits = make_edits(4, h=48, w=48, seed=2)
    first = [o.score for o in client.score(edits)]
    second = [o.score for o in client.score(edits)]
    assert first == second  # same edits, same seed: identical scores
    alone = client.score([edits[2]])[0].score  # one edit alone vs. batched with others
    assert alone == pytest.approx(first[2], abs=1e-5)
    assert len(set(first)) > 1  # the judge does look at the images


def test_undecodable_image_is_a_per_edit_error_and_the_rest_is_scored(client) -> None:  # type: ignore[no-untyped-def]
    edits = make_edits(3, h=48, w=48, seed=3)
    edits[1].edited_image = b"definitely not a png"
    outcomes = client.score(edits)
    assert outcomes[1].score is None and "edited_image" in outcomes[1].error
    for i in (0, 2):
        assert outcomes[i].error is None and 0.0 <= outcomes[i].score <= 1.0


def test_a_groups_shared_read_only_images_score_as_if_sent_alone(client) -> None:  # type: ignore[no-untyped-def]
    edits = groups_of([3], 48, 48, seed=4)
    request = on_the_wire(edits, {"g0"})  # one decode of the source, read-only, for the three edits
    assert [o.score for o in client.score(request.edits, request.groups)] == [
        o.score for o in client.score(edits)
    ]


def test_text_mode_scores_or_falls_back_marked_never_silently(judge_server, judge_cfg) -> None:  # type: ignore[no-untyped-def]
    """Every edit gets a parsed score, or after the retries the neutral fallback marked `fallback` = 1
    with the unparsed answers in a warning; never an error that stops the epoch, never an unmarked guess.
    At temperature 2 the tiny judge's first answer token is a digit 0-5 only ~20% of the time (measured
    with transformers), so with one token per answer both kinds occur (seeded: the same ones every time)."""
    judge = judge_server.scorer.share_engine(
        dataclasses.replace(
            judge_cfg,
            score_mode="text",
            text_retries=2,
            max_tokens=1,
            temperature=2.0,
            text_fallback_score=0.4,
        )
    )
    edits = _decoded(6, seed=4)
    outcomes = judge_server.run_coroutine(judge.score(edits))
    again = judge_server.run_coroutine(judge.score(edits))
    assert len(outcomes) == 6
    for o, o2 in zip(outcomes, again, strict=True):
        assert (o.score, o.components) == (o2.score, o2.components)  # per-attempt seeds: reproducible
        assert o.error is None
        if o.components["fallback"] == 0.0:
            assert 0.0 <= o.score <= 1.0
            assert o.components["raw"] == pytest.approx(o.score * 5)
            assert o.components["attempts"] in (1.0, 2.0)
        else:
            assert o.score == 0.4 and o.components == {
                "expected_score": 2.0,
                "attempts": 2.0,
                "fallback": 1.0,
            }
            assert any(
                "parse failure" in w and "2 judge answers" in w and "fallback 0.4" in w for w in o.warnings
            )
    assert any(o.components["fallback"] == 1.0 for o in outcomes), [o.components for o in outcomes]


def test_generate_timeout_fails_the_call_instead_of_hanging(judge_server, judge_cfg) -> None:  # type: ignore[no-untyped-def]
    from cocoedit.rewards.mllm import JudgeEngineError

    judge = judge_server.scorer.share_engine(dataclasses.replace(judge_cfg, generate_timeout_s=1e-4))
    with pytest.raises(JudgeEngineError, match="generate_timeout_s"):
        judge_server.run_coroutine(judge.score(_decoded(2, seed=5)))
    # the engine is still healthy afterwards
    ok = judge_server.run_coroutine(judge_server.scorer.score(_decoded(1, seed=5)))
    assert ok[0].error is None and math.isfinite(ok[0].score)
