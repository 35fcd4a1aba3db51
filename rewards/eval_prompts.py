"""Benchmark judge prompts and robust parsing of their JSON answers (docs/algorithm.md section 6). Pure Python.

Two protocols, each a list of *questions* put to an MLLM judge for one edit:

- `gedit` (VIEScore, as GEdit-Bench scores): two questions, answers 0-10.
    SC: sees [source, edited] + instruction -> [editing success, over-editing];   SC = min of the two
    PQ: sees [edited] only                 -> [naturalness, artifacts];          PQ = min of the two
    O  = sqrt(SC * PQ).
- `imgedit` (ImgEdit-Bench basic): one question per edit with three criteria of the edit type, 1-5:
  instruction compliance, visual seamlessness / naturalness of the edited part, and preservation of
  everything the instruction does not touch; the item score is their mean.

Answers are asked for as JSON. `parse_json_answer` accepts what judges actually write (code fences,
prose around the object, single quotes, trailing commas, numbers as strings or "7/10") and raises
`AnswerParseError` for anything it cannot read with certainty: a failure is counted and reported,
never replaced by a guess.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

PROTOCOLS = ("gedit", "imgedit")
PROMPT_VERSION = "cocoedit-eval-v1"

GEDIT_GROUPS = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)
IMGEDIT_TYPES = ("add", "adjust", "extract", "replace", "remove", "background", "style", "hybrid", "action")


class AnswerParseError(ValueError):
    """A judge answer that cannot be read as the requested JSON scores (reported, never guessed)."""


@dataclass(frozen=True)
class Question:
    """One judge request: which images it sees (in order), the text, and the JSON keys to read back."""

    name: str  # "sc" | "pq" | "imgedit"
    images: tuple[str, ...]  # subset of ("source", "edited"), in the order they are passed
    system: str
    text: str  # the user text; images are placed before it
    keys: tuple[str, ...]  # numeric fields of the JSON answer
    low: float  # valid score range of every key
    high: float


_VIESCORE_SYSTEM = (
    "You are a professional digital artist. You evaluate AI-generated images against given rules. "
    "All images are AI-generated, including any people in them. Keep your reasoning short, and answer "
    'with one JSON object only, in this form: {"score": [<number>, <number>], "reasoning": "<one sentence>"}'
)

_GEDIT_SC = (
    "RULES:\n"
    "Two images are given: the first is the original image, the second is an edited version of it.\n"
    "Judge how well the editing instruction was carried out in the second image. The two images may "
    "look identical when the edit failed.\n"
    "Give two scores from 0 to 10:\n"
    "score 1, editing success: 0 means the edited image does not follow the instruction at all, 10 means "
    "it follows the instruction perfectly;\n"
    "score 2, over-editing: 0 means the edited image is a completely different scene from the original, "
    "10 means it is a minimal yet effective edit of the original.\n"
    'Answer {"score": [editing_success, over_editing], "reasoning": "..."}.\n'
    "Editing instruction: {instruction}"
)

_GEDIT_PQ = (
    "RULES:\n"
    "The image is AI-generated. Judge its perceptual quality.\n"
    "Give two scores from 0 to 10:\n"
    "score 1, naturalness: 0 means the scene does not look natural at all (wrong sense of distance, "
    "shadows or lighting), 10 means it looks natural;\n"
    "score 2, artifacts: 0 means a large part of the image is distorted, blurred, watermarked, or has "
    "unharmonised subjects or malformed body parts, 10 means there are no artifacts.\n"
    'Answer {"score": [naturalness, artifacts], "reasoning": "..."}.'
)

_IMGEDIT_SYSTEM = (
    "You are a strict evaluator of instruction-based image edits. You see the original image, then the "
    "edited image, and the instruction. Score each criterion with an integer from 1 (very poor) to 5 "
    "(excellent). Answer with one JSON object only."
)

# Per ImgEdit edit type: what the second criterion (the quality of the edited part) looks at.
_IMGEDIT_FOCUS: dict[str, str] = {
    "add": "the added object fits the scene in scale, lighting, perspective and edges",
    "adjust": "the adjusted attribute (colour, material, shape) looks real and blends into the object",
    "extract": "the extracted subject is complete, cleanly cut out and undistorted",
    "replace": "the new object fits where the old one was, with matching scale, lighting and edges",
    "remove": "the removed region is filled plausibly, with no ghosting, smears or leftover parts",
    "background": "the new background is coherent and the foreground is cleanly separated from it",
    "style": "the style is applied consistently over the whole image while the content stays readable",
    "hybrid": "every requested change is carried out and the changes fit together naturally",
    "action": "the new pose or action is anatomically plausible and the subject keeps its identity",
}

_IMGEDIT_TEXT = (
    "Edit type: {edit_type}.\n"
    "Editing instruction: {instruction}\n"
    "Criteria (each an integer from 1 to 5):\n"
    "compliance: the edit does exactly what the instruction asks, no more and no less;\n"
    "quality: {focus};\n"
    "preservation: everything the instruction does not mention is unchanged (identity, layout, colours, "
    "details).\n"
    'Answer {{"compliance": <1-5>, "quality": <1-5>, "preservation": <1-5>, "reasoning": "<one sentence>"}}.'
)


def gedit_questions(instruction: str) -> list[Question]:
    """The two VIEScore questions of one GEdit edit (SC on [source, edited], PQ on [edited])."""
    _check_instruction(instruction)
    return [
        Question(
            "sc",
            ("source", "edited"),
            _VIESCORE_SYSTEM,
            _GEDIT_SC.replace("{instruction}", instruction.strip()),
            ("score",),
            0.0,
            10.0,
        ),
        Question("pq", ("edited",), _VIESCORE_SYSTEM, _GEDIT_PQ, ("score",), 0.0, 10.0),
    ]


def imgedit_questions(instruction: str, edit_type: str) -> list[Question]:
    """The ImgEdit question of one edit: three 1-5 criteria whose wording follows the edit type."""
    _check_instruction(instruction)
    focus = _IMGEDIT_FOCUS.get(edit_type, "the edited region looks natural and blends into the image")
    text = _IMGEDIT_TEXT.format(
        edit_type=edit_type or "unknown", instruction=instruction.strip(), focus=focus
    )
    return [
        Question(
            "imgedit",
            ("source", "edited"),
            _IMGEDIT_SYSTEM,
            text,
            ("compliance", "quality", "preservation"),
            1.0,
            5.0,
        )
    ]


def questions(protocol: str, instruction: str, task: str) -> list[Question]:
    if protocol == "gedit":
        return gedit_questions(instruction)
    if protocol == "imgedit":
        return imgedit_questions(instruction, task)
    raise ValueError(f"judge protocol {protocol!r} is unknown; expected one of {PROTOCOLS}")


def build_messages(question: Question) -> list[dict[str, Any]]:
    """Chat messages: system, then user content [image placeholders in question.images order, text]."""
    return [
        {"role": "system", "content": question.system},
        {
            "role": "user",
            "content": [
                *({"type": "image"} for _ in question.images),
                {"type": "text", "text": question.text},
            ],
        },
    ]


def _check_instruction(instruction: str) -> None:
    if not instruction.strip():
        raise ValueError("instruction is empty; the judge needs the edit instruction")


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*$")


def _objects(text: str) -> list[str]:
    """Balanced {...} substrings of text, outermost first, in order of appearance."""
    found, depth, start, in_str, quote, escape = [], 0, -1, False, "", False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'" and depth > 0:
            in_str, quote = True, ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def _load_object(candidate: str) -> Optional[dict]:
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            obj = json.loads(attempt)
        except json.JSONDecodeError:
            try:  # single quotes, True/False/None: a Python literal
                obj = ast.literal_eval(attempt)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(obj, dict):
            return obj
    return None


def _number(value: Any, key: str, answer: str) -> float:
    if isinstance(value, bool):
        raise AnswerParseError(f"{key}={value!r} is not a number in the judge's answer {answer!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        m = _FRACTION.match(value)
        if m is None:
            raise AnswerParseError(f"{key}={value!r} is not a number in the judge's answer {answer!r}")
        number = float(m.group(1))
        if m.group(2) is not None and float(m.group(2)) not in (5.0, 10.0):
            raise AnswerParseError(f"{key}={value!r} is out of an unexpected scale in {answer!r}")
    else:
        raise AnswerParseError(f"{key}={value!r} is not a number in the judge's answer {answer!r}")
    if not math.isfinite(number):
        raise AnswerParseError(f"{key}={value!r} is not finite in the judge's answer {answer!r}")
    return number


def parse_json_answer(answer: str, question: Question) -> list[float]:
    """The scores the question asks for, read from the judge's answer, each checked against its range.

    gedit: {"score": [a, b]} -> [a, b]; imgedit: {"compliance": a, "quality": b, "preservation": c}
    -> [a, b, c]. Keys are matched case-insensitively. Raises AnswerParseError naming the problem.
    """
    if not answer or not answer.strip():
        raise AnswerParseError("the judge's answer is empty")
    candidates = [m.group(1) for m in _FENCE.finditer(answer)] + [answer]
    obj = None
    for text in candidates:
        for cand in _objects(text):
            obj = _load_object(cand)
            if obj is not None and any(str(k).lower() in question.keys for k in obj):
                break
            obj = None
        if obj is not None:
            break
    if obj is None:
        raise AnswerParseError(
            f"no JSON object with {list(question.keys)} in the judge's answer {answer[:300]!r}"
        )
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    if question.keys == ("score",):
        raw = lowered.get("score")
        if not isinstance(raw, (list, tuple)) or len(raw) != 2:
            raise AnswerParseError(f"'score' must be a list of 2 numbers, got {raw!r} in {answer[:300]!r}")
        values = [_number(v, f"score[{i}]", answer) for i, v in enumerate(raw)]
    else:
        missing = [k for k in question.keys if k not in lowered]
        if missing:
            raise AnswerParseError(f"the judge's answer lacks {missing}: {answer[:300]!r}")
        values = [_number(lowered[k], k, answer) for k in question.keys]
    for v in values:
        if not question.low <= v <= question.high:
            raise AnswerParseError(
                f"score {v} is outside [{question.low:g}, {question.high:g}] in the judge's answer {answer[:300]!r}"
            )
    return values


def gedit_item_scores(sc_pair: list[float], pq_pair: list[float]) -> dict[str, float]:
    """VIEScore per edit: SC = min(success, over-editing), PQ = min(naturalness, artifacts), O = sqrt(SC PQ)."""
    sc, pq = min(sc_pair), min(pq_pair)
    return {
        "sc": sc,
        "pq": pq,
        "o": math.sqrt(sc * pq),
        "sc_success": sc_pair[0],
        "sc_overedit": sc_pair[1],
        "pq_natural": pq_pair[0],
        "pq_artifacts": pq_pair[1],
    }


def imgedit_item_scores(values: list[float]) -> dict[str, float]:
    """ImgEdit per edit: the three criteria and their mean ("score", 1-5)."""
    compliance, quality, preservation = values
    return {
        "compliance": compliance,
        "quality": quality,
        "preservation": preservation,
        "score": (compliance + quality + preservation) / 3.0,
    }
