"""The curation MLLM (rewards/annotate.py): grounding frames and box scaling (fast), and refinement,
grounding and judge scores on the tiny Qwen2.5-VL judge served by vLLM (slow: one engine start, 20-50 s
on CPU, shared by the module). Run the slow ones with: pytest -m slow tests/rewards/test_annotate.py
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cocoedit.rewards.annotate import (
    AnnotateConfig,
    AnnotationRequest,
    Annotator,
    grounding_frame,
    scale_boxes,
)
from cocoedit.rewards.config import JudgeConfig
from cocoedit.rewards.curate_prompts import Box


def test_grounding_frame_is_what_the_qwen_processor_sees() -> None:
    from transformers import Qwen2VLImageProcessor

    big = Qwen2VLImageProcessor()  # Qwen2.5-VL's defaults: 28 px merged patches, up to 12.8 Mpx
    assert grounding_frame(1024, 768, 512, big) == (504, 392)  # 512 x 384 rounded to multiples of 28
    tiny = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112)  # the tiny judge's limits
    h, w = grounding_frame(1000, 1000, 512, tiny)
    assert h * w <= 112 * 112 and h % 28 == 0 and w % 28 == 0
    # what the processor itself makes of an image of that frame: unchanged
    out = tiny(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="np")
    assert tuple(out["image_grid_thw"][0][1:] * 14) == (h, w)


def test_boxes_scale_from_the_frame_to_the_image() -> None:
    boxes = [Box(10, 20, 30, 40, "cup")]
    assert scale_boxes(boxes, (56, 112), (112, 448)) == [Box(40, 40, 120, 80, "cup")]


@pytest.fixture(scope="module")
def annotator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Annotator]:
    from cocoedit.rewards.tiny_judge import build_tiny_judge

    path: Path = build_tiny_judge(tmp_path_factory.mktemp("tiny_judge"))
    judge_cfg = JudgeConfig(
        model_path=str(path),
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.1,
        image_size=64,
        generate_timeout_s=300.0,
    )
    ann = Annotator(judge_cfg, AnnotateConfig(refine_max_tokens=24, ground_max_tokens=24))
    ann.load()
    yield ann
    ann.close()


@pytest.mark.slow
def test_tiny_judge_answers_are_counted_as_parse_failures_never_guessed(annotator: Annotator) -> None:
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)

    requests = [AnnotationRequest(f"t{i}", "make the square blue", image(), image()) for i in range(4)]
    requests += [AnnotationRequest(f"g{i}", "remove the cup", image(), None) for i in range(2)]
    out = annotator.annotate(requests)
    assert [a.item_id for a in out] == [r.item_id for r in requests]
    for a in out[:4]:
        # the untrained judge answers digits, not the JSON object: a counted failure with its answer
        assert a.refined is None and a.refine_error.startswith("parse failure")
        assert a.refine_answer is not None
        # the judge score is the training judge's logits score, of the ORIGINAL instruction here
        assert a.judge_error is None and 0.0 <= a.judge_score <= 1.0
        assert a.judge_instruction == "make the square blue"
        assert a.boxes is None and a.ground_error is None
    for a in out[4:]:
        assert a.boxes is None and a.ground_error.startswith("parse failure") and a.ground_answer is not None
        assert a.refined is None and a.judge_score is None and a.refine_error is None
    # temperature 0: the same request gets the same answer
    again = annotator.annotate(requests[:1])[0]
    assert again.refine_answer == out[0].refine_answer and again.judge_score == pytest.approx(
        out[0].judge_score
    )
    settings = annotator.settings()
    assert (
        settings["refine_prompt"] == "cocoedit-refine-v1"
        and settings["ground_prompt"] == "cocoedit-ground-v1"
    )
