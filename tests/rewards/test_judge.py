"""The judge's prompt and score maths (rewards/judge.py) and the scorer's pure helpers, without vLLM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoedit.rewards.config import JudgeConfig
from cocoedit.rewards.judge import (
    PROMPTS,
    JudgeError,
    build_messages,
    digit_token_ids,
    parse_text_score,
    prompt_template,
    score_from_logprobs,
)
from cocoedit.rewards.mllm import MLLMJudge, resize_for_judge

DIGIT_IDS = [100, 101, 102, 103, 104, 105]  # token ids of "0".."5" in these tests


def test_logit_expectation_uniform_over_all_digits() -> None:
    top = {t: math.log(1 / 6) for t in DIGIT_IDS}
    s = score_from_logprobs(top, DIGIT_IDS)
    assert s.expected_score == pytest.approx(2.5)  # (0+1+2+3+4+5)/6
    assert s.score == pytest.approx(0.5)
    assert s.p_top == pytest.approx(1 / 6)
    assert s.digit_mass == pytest.approx(1.0)
    assert s.digits_present == 6


def test_logit_expectation_renormalises_over_present_digits() -> None:
    # Only "3" (p=0.2) and "5" (p=0.6) are in the top-k, beside a non-digit token (p=0.15).
    top = {103: math.log(0.2), 105: math.log(0.6), 7: math.log(0.15)}
    s = score_from_logprobs(top, DIGIT_IDS)
    # renormalised: p3 = 0.25, p5 = 0.75 -> E = 0.75 + 3.75 = 4.5
    assert s.expected_score == pytest.approx(4.5)
    assert s.score == pytest.approx(0.9)
    assert s.p_top == pytest.approx(0.75)
    assert s.digit_mass == pytest.approx(0.8)
    assert s.digits_present == 2


def test_logit_expectation_hand_computed_three_digits() -> None:
    # logprobs -1, -2, -3 on digits 0, 4, 5: weights e^0, e^-1, e^-2 after shifting by the max.
    top = {100: -1.0, 104: -2.0, 105: -3.0}
    w = [1.0, math.exp(-1), math.exp(-2)]
    expected = (0 * w[0] + 4 * w[1] + 5 * w[2]) / sum(w)
    s = score_from_logprobs(top, DIGIT_IDS)
    assert s.expected_score == pytest.approx(expected)  # (1.4715 + 0.6767) / 1.5032
    assert s.expected_score == pytest.approx(1.42907, abs=1e-4)
    assert s.score == pytest.approx(expected / 5)
    assert s.p_top == pytest.approx(1 / sum(w))


def test_logit_expectation_is_shift_invariant_and_handles_tiny_logprobs() -> None:
    top = {101: -900.0, 102: -901.0}  # exp underflows without the max shift
    s = score_from_logprobs(top, DIGIT_IDS)
    w = 1 / (1 + math.exp(-1))
    assert s.expected_score == pytest.approx(1 * w + 2 * (1 - w))


def test_no_digit_in_top_k_is_an_error_not_a_default() -> None:
    with pytest.raises(JudgeError, match="none of the digit tokens 0-5"):
        score_from_logprobs({1: -0.1, 2: -3.0}, DIGIT_IDS)


def test_nan_logprob_is_an_error() -> None:
    with pytest.raises(JudgeError, match="non-finite"):
        score_from_logprobs({101: float("nan"), 102: -1.0}, DIGIT_IDS)


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("4", 0.8),
        ("0", 0.0),
        ("5", 1.0),
        ("Score: 3.5", 0.7),
        ("3.", 0.6),
        (" 2\n", 0.4),
        ("4/5", 0.8),
        ("The score is 1 out of 5.", 0.2),
    ],
)
def test_text_parser_accepts(answer: str, score: float) -> None:
    assert parse_text_score(answer) == pytest.approx(score)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("I'd say 7", "outside"),  # the FIRST number decides; 7 is out of range, not skipped
        ("10", "outside"),
        ("5.5", "outside"),
        ("-1", "outside"),
        ("", "no number"),
        ("five", "no number"),  # number words are not parsed (documented in rewards/judge.py)
        ("great edit!", "no number"),
    ],
)
def test_text_parser_rejects_with_the_answer_in_the_message(answer: str, why: str) -> None:
    with pytest.raises(JudgeError, match="parse failure") as info:
        parse_text_score(answer)
    assert why in str(info.value)
    assert repr(answer) in str(info.value)


def test_prompt_shows_source_then_edited_then_instruction_and_rubric() -> None:
    messages = build_messages("make the sky purple", "cocoedit-v1")
    assert [m["role"] for m in messages] == ["system", "user"]
    content = messages[1]["content"]
    kinds = [c["type"] for c in content]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "Source image:"  # image index 0 is the source
    assert content[2]["text"] == "Edited image:"  # image index 1 is the edited image
    request = content[4]["text"]
    assert "make the sky purple" in request
    assert "0: wrong object edited or edit fails" in request
    assert "5: correct object, requirements met, high visual quality" in request
    assert request.rstrip().endswith("Answer with the number only.")


def test_prompt_rejects_empty_instruction_and_unknown_version() -> None:
    with pytest.raises(JudgeError, match="instruction is empty"):
        build_messages("   ", "cocoedit-v1")
    with pytest.raises(ValueError, match="prompt_version='nope' is unknown"):
        prompt_template("nope")
    assert "cocoedit-v1" in PROMPTS


class _SplittingTokenizer:
    """Encodes "3" as two tokens, like a tokenizer that merges digits differently."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [7, 8] if text == "3" else [ord(text)]


def test_digit_ids_fail_loudly_when_a_digit_is_not_one_token() -> None:
    with pytest.raises(ValueError, match="encodes digit '3' as 2 tokens"):
        digit_token_ids(_SplittingTokenizer())


def test_resize_keeps_aspect_and_longer_side() -> None:
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    assert resize_for_judge(img, 64).size == (64, 32)  # PIL size is (W, H)
    assert resize_for_judge(np.zeros((64, 64, 3), np.uint8), 64).size == (64, 64)
    with pytest.raises(JudgeError, match=r"\[H, W, 3\] uint8"):
        resize_for_judge(np.zeros((8, 8), np.uint8), 64)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="rewards.mllm.images_per_prompt=1"):
        MLLMJudge(JudgeConfig(images_per_prompt=1))
    with pytest.raises(ValueError, match="rewards.mllm.logprobs_k=3"):
        MLLMJudge(JudgeConfig(logprobs_k=3))
    with pytest.raises(ValueError, match="prompt_version"):
        MLLMJudge(JudgeConfig(prompt_version="v0"))
