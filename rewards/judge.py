"""The MLLM judge's prompt and score maths (docs/algorithm.md section 3); pure Python, no vLLM.

The judge sees [source, edited] images in that order (the released server passes them reversed),
the instruction, and the CoCoEdit 0-5 rubric. Two score modes turn its answer into S in [0, 1]:

- `logits`: p_k = softmax over the first answer token's log-probabilities restricted to the digit
  tokens "0".."5" that appear in the returned top-k (renormalised over those present);
  S = sum_k p_k k / 5. No digit in the top-k is an error for that edit, never a default score.
- `text`: the first number in the answer must lie in [0, 5]; S = number / 5. Number words ("five")
  are not parsed: the rubric asks for the number only, and a judge that answers in words is
  reported as a parse failure so the prompt can be fixed rather than silently guessed. After the
  bounded retries the service scores such an edit with the neutral fallback, marked and counted
  (rewards/mllm.py; rewards/weighting.py fails the epoch when too many edits need it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

MAX_SCORE = 5
DIGITS = tuple(str(k) for k in range(MAX_SCORE + 1))


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned judge prompt: system text, labels placed before each image, the request."""

    system: str
    source_label: str
    edited_label: str
    request: str  # formatted with {instruction}


# Every prompt the judge has used, by version; `JudgeConfig.prompt_version` picks one and the
# service reports it in its settings, so scores from different prompts are never mixed unknowingly.
PROMPTS: dict[str, PromptTemplate] = {
    "cocoedit-v1": PromptTemplate(
        system="You are a strict and careful judge of instruction-based image edits.",
        source_label="Source image:",
        edited_label="Edited image:",
        request=(
            "The edited image was produced from the source image by following this instruction:\n"
            "{instruction}\n"
            "Rate how well the edit follows the instruction on a scale from 0 to 5.\n"
            "0: wrong object edited or edit fails;\n"
            "1: the right object, but the edit barely follows the instruction;\n"
            "2: the edit partly follows the instruction, with major flaws;\n"
            "3: the edit follows the instruction, with clear flaws or visible artifacts;\n"
            "4: correct object and requirements met, with minor flaws;\n"
            "5: correct object, requirements met, high visual quality.\n"
            "Answer with the number only."
        ),
    ),
}


class JudgeError(ValueError):
    """The judge's answer for one edit could not be turned into a score (reported per edit)."""


def prompt_template(version: str) -> PromptTemplate:
    """The prompt of `version`; an unknown version is an error listing the known ones."""
    if version not in PROMPTS:
        raise ValueError(
            f"rewards.mllm.prompt_version={version!r} is unknown; known versions: {sorted(PROMPTS)}"
        )
    return PROMPTS[version]


def build_messages(instruction: str, version: str) -> list[dict[str, Any]]:
    """Chat messages for one edit: system, then user content [label, source, label, edited, request].

    Images appear as `{"type": "image"}` placeholders in the order the images must be passed to the
    engine: index 0 is the source image, index 1 the edited image.
    """
    if not instruction.strip():
        raise JudgeError("instruction is empty; the judge needs the edit instruction to score an edit")
    t = prompt_template(version)
    return [
        {"role": "system", "content": t.system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": t.source_label},
                {"type": "image"},
                {"type": "text", "text": t.edited_label},
                {"type": "image"},
                {"type": "text", "text": t.request.format(instruction=instruction.strip())},
            ],
        },
    ]


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def digit_token_ids(tokenizer: _Tokenizer) -> list[int]:
    """Token ids of "0".."5", looked up from the tokenizer; each digit must be exactly one token."""
    ids = []
    for d in DIGITS:
        enc = list(tokenizer.encode(d, add_special_tokens=False))
        if len(enc) != 1:
            raise ValueError(
                f"the judge tokenizer encodes digit {d!r} as {len(enc)} tokens {enc}; logits mode needs "
                "every digit 0-5 to be a single token: use rewards.mllm.score_mode=text with this model"
            )
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"the judge tokenizer maps digits 0-5 to repeated token ids {ids}")
    return ids


@dataclass(frozen=True)
class LogitScore:
    score: float  # S in [0, 1]
    expected_score: float  # sum_k p_k k, in [0, 5]
    p_top: float  # largest renormalised digit probability
    digit_mass: float  # sum of the present digits' probabilities before renormalising
    digits_present: int  # how many of 0..5 were in the top-k


def score_from_logprobs(top_logprobs: dict[int, float], digit_ids: list[int]) -> LogitScore:
    """Expected digit under the first answer token's distribution restricted to "0".."5".

    top_logprobs: token id -> log-probability of the returned top-k of the first generated token.
    digit_ids: token ids of "0".."5" (index k is digit k), from `digit_token_ids`.
    """
    present = [(k, top_logprobs[t]) for k, t in enumerate(digit_ids) if t in top_logprobs]
    if not present:
        shown = sorted(top_logprobs.items(), key=lambda kv: -kv[1])[:5]
        raise JudgeError(
            f"none of the digit tokens 0-5 is among the judge's top-{len(top_logprobs)} first tokens "
            f"(top ids/logprobs: {shown}); raise rewards.mllm.logprobs_k or use score_mode=text"
        )
    for k, lp in present:
        if not math.isfinite(lp) and lp != -math.inf:
            raise JudgeError(f"the judge returned a non-finite log-probability {lp} for digit {k}")
    m = max(lp for _, lp in present)
    if m == -math.inf:
        raise JudgeError("every digit token 0-5 in the judge's top-k has probability 0")
    weights = [(k, math.exp(lp - m)) for k, lp in present]
    z = sum(w for _, w in weights)
    expected = sum(k * w for k, w in weights) / z
    return LogitScore(
        score=expected / MAX_SCORE,
        expected_score=expected,
        p_top=max(w for _, w in weights) / z,
        digit_mass=sum(math.exp(lp) for _, lp in present),
        digits_present=len(present),
    )


# A number with an optional sign and decimals; the sign is kept so "-1" is out of range, not 1.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_text_score(answer: str) -> float:
    """The first number in `answer`, which must lie in [0, 5], divided by 5.

    "4" -> 0.8, "Score: 3.5" -> 0.7; "I'd say 7", "", "five" raise JudgeError showing the answer.
    """
    match = _NUMBER.search(answer)
    if match is None:
        raise JudgeError(f"parse failure: no number in the judge's answer {answer!r}")
    value = float(match.group())
    if not 0.0 <= value <= MAX_SCORE:
        raise JudgeError(
            f"parse failure: the first number {match.group()} in the judge's answer {answer!r} "
            f"is outside [0, {MAX_SCORE}]"
        )
    return value / MAX_SCORE
