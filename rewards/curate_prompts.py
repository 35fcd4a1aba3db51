"""Prompts and strict answer parsers of data curation (`cocoedit data curate`); pure Python, no vLLM.

Two requests to the MLLM (the judge's model family, Qwen2.5-VL), both answered as JSON at temperature 0:

- grounding: sees [source] and the instruction; names the region the instruction edits as boxes
  `[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]` in pixels of the image it was shown (Qwen2.5-VL's
  own grounding format: absolute coordinates of its input image). For items without a target image.
- refinement: sees [source, target] and the original instruction; writes a precise instruction
  naming the object, the change and the region, with an edit type from EDIT_TYPES:
  `{"object": ..., "change": ..., "region": ..., "type": ..., "instruction": ...}`.

Prompts are versioned data (like rewards/judge.py's PROMPTS); a curation run records the versions it used.
The parsers are strict: the answer must be exactly the JSON asked for (optionally inside one ```json
fence), every field of the right type and range, or `CurationParseError` says what is wrong. A failure
is counted and the item listed, never repaired or guessed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

EDIT_TYPES = ("add", "remove", "replace", "recolour", "background", "style", "text", "other")
MAX_REFINED_CHARS = 300


class CurationParseError(ValueError):
    """An MLLM answer that is not the JSON the curation prompt asked for (counted, item listed)."""


@dataclass(frozen=True)
class CurationPrompt:
    """One versioned prompt: system text, labels before each image, and the request text."""

    system: str
    image_labels: tuple[str, ...]  # one label per image, in the order the images are passed
    request: str  # formatted with {instruction}, {width}, {height}, {types}


GROUND_PROMPTS: dict[str, CurationPrompt] = {
    "cocoedit-ground-v1": CurationPrompt(
        system="You are a precise visual grounding assistant.",
        image_labels=("Image:",),
        request=(
            "This image will be edited with the instruction:\n{instruction}\n"
            "Locate the region the instruction changes: every object it edits or removes, or, when it "
            "adds something, the place where the new object goes.\n"
            "Answer with JSON only: a list of boxes in pixel coordinates of this {width}x{height} image, "
            '[{{"bbox_2d": [x1, y1, x2, y2], "label": "<object>"}}].'
        ),
    ),
}

REFINE_PROMPTS: dict[str, CurationPrompt] = {
    "cocoedit-refine-v1": CurationPrompt(
        system="You write precise instructions for image edits.",
        image_labels=("Source image:", "Edited image:"),
        request=(
            "The edited image was made from the source image with this instruction:\n{instruction}\n"
            "Compare the two images and write one precise instruction that names the object, the change "
            "and the region of the image where it happens, so that someone who sees only the source image "
            "would make exactly this edit and change nothing else.\n"
            "Answer with JSON only, in this form:\n"
            '{{"object": "<the object edited>", "change": "<what changes>", "region": "<where in the image>", '
            '"type": "<one of {types}>", "instruction": "<the precise instruction>"}}'
        ),
    ),
}


def _prompt(table: dict[str, CurationPrompt], version: str, kind: str) -> CurationPrompt:
    if version not in table:
        raise ValueError(f"curate.{kind}_prompt={version!r} is unknown; known versions: {sorted(table)}")
    return table[version]


def ground_prompt(version: str) -> CurationPrompt:
    return _prompt(GROUND_PROMPTS, version, "ground")


def refine_prompt(version: str) -> CurationPrompt:
    return _prompt(REFINE_PROMPTS, version, "refine")


def build_messages(
    prompt: CurationPrompt, instruction: str, width: int = 0, height: int = 0
) -> list[dict[str, Any]]:
    """Chat messages: system, then user content [label, image, label, image, ..., request]; images are
    `{"type": "image"}` placeholders, passed to the engine in the order of prompt.image_labels."""
    if not instruction.strip():
        raise ValueError("instruction is empty; curation prompts need the original instruction")
    content: list[dict[str, Any]] = []
    for label in prompt.image_labels:
        content += [{"type": "text", "text": label}, {"type": "image"}]
    text = prompt.request.format(
        instruction=instruction.strip(), width=width, height=height, types=", ".join(EDIT_TYPES)
    )
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": content}]


_FENCED = re.compile(r"^```(?:json|JSON)?[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def _json(answer: str) -> Any:
    """The JSON value of an answer that is exactly JSON, or exactly one ```json fence around it."""
    text = answer.strip()
    if not text:
        raise CurationParseError("the answer is empty")
    fenced = _FENCED.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CurationParseError(f"not JSON ({e.msg} at char {e.pos}): {answer[:200]!r}") from e


@dataclass(frozen=True)
class Box:
    """A box in pixels of the image the MLLM saw: x1 < x2, y1 < y2."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str


def parse_grounding(answer: str, width: int, height: int) -> list[Box]:
    """The boxes of a grounding answer, each inside the width x height frame the model saw.

    `[{"bbox_2d": [10, 20, 50, 60], "label": "cup"}]` -> [Box(10, 20, 50, 60, "cup")]; a single object
    instead of a list is accepted. An empty list, a box with x2 <= x1 or outside the frame, a missing
    key or a non-number raise CurationParseError."""
    value = _json(answer)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise CurationParseError(f"expected a list of boxes, got {type(value).__name__}: {answer[:200]!r}")
    if not value:
        raise CurationParseError("the answer lists no box")
    boxes = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "bbox_2d" not in entry:
            raise CurationParseError(f"box {i} is not an object with 'bbox_2d': {entry!r}")
        unknown = sorted(set(entry) - {"bbox_2d", "label"})
        if unknown:
            raise CurationParseError(f"box {i} has unknown keys {unknown}")
        coords = entry["bbox_2d"]
        if not (
            isinstance(coords, list)
            and len(coords) == 4
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)
        ):
            raise CurationParseError(f"box {i}: bbox_2d must be 4 numbers [x1, y1, x2, y2], got {coords!r}")
        x1, y1, x2, y2 = (float(c) for c in coords)
        if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
            raise CurationParseError(f"box {i}: bbox_2d {coords!r} is not finite")
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise CurationParseError(
                f"box {i}: bbox_2d {coords!r} is empty or outside the {width}x{height} image"
            )
        label = entry.get("label", "")
        if not isinstance(label, str):
            raise CurationParseError(f"box {i}: label must be a string, got {label!r}")
        boxes.append(Box(x1, y1, x2, y2, label))
    return boxes


@dataclass(frozen=True)
class Refinement:
    """A refined instruction and its parts."""

    object: str
    change: str
    region: str
    type: str  # one of EDIT_TYPES
    instruction: str


_REFINE_KEYS = ("object", "change", "region", "type", "instruction")


def parse_refinement(answer: str) -> Refinement:
    """The refinement of an answer that is exactly the requested JSON object: five non-empty strings,
    `type` one of EDIT_TYPES, `instruction` one line of at most MAX_REFINED_CHARS characters."""
    value = _json(answer)
    if not isinstance(value, dict):
        raise CurationParseError(f"expected a JSON object, got {type(value).__name__}: {answer[:200]!r}")
    missing = [k for k in _REFINE_KEYS if k not in value]
    unknown = sorted(set(value) - set(_REFINE_KEYS))
    if missing or unknown:
        raise CurationParseError(f"keys: missing {missing}, unknown {unknown}; expected {list(_REFINE_KEYS)}")
    for k in _REFINE_KEYS:
        if not isinstance(value[k], str) or not value[k].strip():
            raise CurationParseError(f"{k} must be a non-empty string, got {value[k]!r}")
    kind = value["type"].strip().lower()
    if kind not in EDIT_TYPES:
        raise CurationParseError(f"type {value['type']!r} is not one of {list(EDIT_TYPES)}")
    instruction = value["instruction"].strip()
    if "\n" in instruction or len(instruction) > MAX_REFINED_CHARS:
        raise CurationParseError(
            f"instruction must be one line of at most {MAX_REFINED_CHARS} characters, got {len(instruction)}"
        )
    return Refinement(
        value["object"].strip(), value["change"].strip(), value["region"].strip(), kind, instruction
    )
