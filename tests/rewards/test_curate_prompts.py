"""Curation prompts are versioned data; their parsers accept exactly the JSON asked for."""

from __future__ import annotations

import json

import pytest

from cocoedit.rewards.curate_prompts import (
    EDIT_TYPES,
    GROUND_PROMPTS,
    REFINE_PROMPTS,
    Box,
    CurationParseError,
    Refinement,
    build_messages,
    ground_prompt,
    parse_grounding,
    parse_refinement,
    refine_prompt,
)

GOOD_REFINE = {
    "object": "the red circle",
    "change": "becomes blue",
    "region": "top left",
    "type": "recolour",
    "instruction": "make the red circle at the top left blue",
}


def test_messages_place_one_placeholder_per_image_and_fill_the_request() -> None:
    msgs = build_messages(refine_prompt("cocoedit-refine-v1"), "  make it blue ")
    content = msgs[1]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert "make it blue" in content[-1]["text"] and all(t in content[-1]["text"] for t in EDIT_TYPES)
    ground = build_messages(ground_prompt("cocoedit-ground-v1"), "remove the cup", width=504, height=308)
    assert [c["type"] for c in ground[1]["content"]] == ["text", "image", "text"]
    assert "504x308" in ground[1]["content"][-1]["text"]
    assert ground[0] == {"role": "system", "content": GROUND_PROMPTS["cocoedit-ground-v1"].system}
    with pytest.raises(ValueError, match="known versions"):
        refine_prompt("v0")
    with pytest.raises(ValueError, match="empty"):
        build_messages(REFINE_PROMPTS["cocoedit-refine-v1"], "  ")


def test_grounding_answers() -> None:
    ans = '[{"bbox_2d": [10, 20, 50.5, 60], "label": "cup"}, {"bbox_2d": [0, 0, 5, 5]}]'
    assert parse_grounding(ans, 100, 80) == [Box(10, 20, 50.5, 60, "cup"), Box(0, 0, 5, 5, "")]
    fenced = '```json\n{"bbox_2d": [1, 2, 3, 4], "label": "a"}\n```'
    assert parse_grounding(fenced, 10, 10) == [Box(1, 2, 3, 4, "a")]
    bad = {
        "": "empty",
        "4": "expected a list",
        "[]": "no box",
        "the cup is at [1, 2, 3, 4]": "not JSON",
        '[{"bbox": [1, 2, 3, 4]}]': "bbox_2d",
        '[{"bbox_2d": [1, 2, 3]}]': "4 numbers",
        '[{"bbox_2d": [5, 2, 3, 4]}]': "empty or outside",
        '[{"bbox_2d": [1, 2, 300, 4]}]': "empty or outside",
        '[{"bbox_2d": [1, 2, 3, true]}]': "4 numbers",
        '[{"bbox_2d": [1, 2, 3, 4], "score": 0.9}]': "unknown keys",
        '[{"bbox_2d": [1, 2, 3, 4], "label": 7}]': "label",
        'Sure! ```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```': "not JSON",  # prose around: not guessed
    }
    for answer, reason in bad.items():
        with pytest.raises(CurationParseError, match=reason):
            parse_grounding(answer, 100, 100)


def test_refinement_answers() -> None:
    assert parse_refinement(json.dumps(GOOD_REFINE)) == Refinement(**GOOD_REFINE)
    assert parse_refinement(json.dumps({**GOOD_REFINE, "type": " Remove "})).type == "remove"
    cases = {
        json.dumps({k: v for k, v in GOOD_REFINE.items() if k != "region"}): "missing \\['region'\\]",
        json.dumps({**GOOD_REFINE, "why": "x"}): "unknown \\['why'\\]",
        json.dumps({**GOOD_REFINE, "type": "resize"}): "not one of",
        json.dumps({**GOOD_REFINE, "object": ""}): "non-empty string",
        json.dumps({**GOOD_REFINE, "change": 3}): "non-empty string",
        json.dumps({**GOOD_REFINE, "instruction": "a\nb"}): "one line",
        json.dumps({**GOOD_REFINE, "instruction": "x" * 301}): "at most 300",
        json.dumps([GOOD_REFINE]): "expected a JSON object",
        "3": "expected a JSON object",  # the tiny judge answers digits
        "01234": "not JSON",
        "4 5 3": "not JSON",
    }
    for answer, reason in cases.items():
        with pytest.raises(CurationParseError, match=reason):
            parse_refinement(answer)
