"""The MLLM work of data curation on one vLLM engine: refine instructions, ground items that have no
target, and judge targets against their (refined) instructions.

    annotator = Annotator(judge_cfg, AnnotateConfig())
    annotator.load()                                  # starts the engine on the annotator's own loop
    annotations = annotator.annotate(requests)        # list[AnnotationRequest] -> list[Annotation]
    annotator.close()

The engine is the judge's (rewards/mllm.py `MLLMJudge`, started from `rewards.mllm`): judge scores are
`MLLMJudge.score` of [source, target] against the instruction, exactly as in training; refinement and
grounding are free-text answers (`MLLMJudge.generate_text`, temperature 0) to the prompts of
rewards/curate_prompts.py. Requests of one call run concurrently (vLLM batches them). An answer that does
not parse is an error of that item, with the answer kept: never repaired or guessed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import numpy as np

from cocoedit.ranges import Range
from cocoedit.rewards.base import DecodedEdit
from cocoedit.rewards.config import JudgeConfig
from cocoedit.rewards.curate_prompts import (
    Box,
    CurationParseError,
    Refinement,
    build_messages,
    ground_prompt,
    parse_grounding,
    parse_refinement,
    refine_prompt,
)
from cocoedit.rewards.judge import JudgeError
from cocoedit.rewards.mllm import MLLMJudge, resize_for_judge


@dataclass(frozen=True)
class AnnotateConfig:
    """What the curation MLLM is asked, and how long its answers may be."""

    refine: bool = True  # write refined instructions for items with a target
    judge: bool = True  # score each target against its (refined) instruction
    ground: bool = True  # boxes for items without a target
    refine_prompt: str = "cocoedit-refine-v1"  # prompt version of the refinement (rewards/curate_prompts.py)
    ground_prompt: str = "cocoedit-ground-v1"  # prompt version of the grounding (rewards/curate_prompts.py)
    refine_max_tokens: Annotated[int, Range(ge=1)] = 200  # longest refinement answer
    ground_max_tokens: Annotated[int, Range(ge=1)] = 160  # longest grounding answer


@dataclass(frozen=True)
class AnnotationRequest:
    """One item: images uint8 [H, W, 3]; target None = no target (grounding instead of refine/judge)."""

    item_id: str
    instruction: str
    source_image: np.ndarray
    target_image: Optional[np.ndarray]


@dataclass
class Annotation:
    """What the MLLM said about one item. Each part is None when it was not asked; a failed part has
    its error and raw answer set and its value None."""

    item_id: str
    refined: Optional[Refinement] = None
    refine_error: Optional[str] = None
    refine_answer: Optional[str] = None
    boxes: Optional[list[Box]] = None  # in pixels of the ORIGINAL source image
    ground_error: Optional[str] = None
    ground_answer: Optional[str] = None
    judge_score: Optional[float] = None  # S in [0, 1] (rewards/judge.py)
    judge_error: Optional[str] = None
    judge_instruction: Optional[str] = None  # the instruction the judge scored against
    errors: list[str] = field(default_factory=list)


def grounding_frame(height: int, width: int, size: int, processor: Any) -> tuple[int, int]:
    """(height, width) of the image the model sees for grounding: the longer side scaled to `size`,
    then Qwen2-VL's smart_resize with the model processor's patch size and pixel limits, so that the
    boxes it answers are in exactly this frame."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    factor = processor.patch_size * processor.merge_size
    min_pixels = processor.size["shortest_edge"]
    max_pixels = processor.size["longest_edge"]
    return smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def scale_boxes(boxes: list[Box], frame: tuple[int, int], shape: tuple[int, int]) -> list[Box]:
    """Boxes in pixels of the (height, width) `frame` the model saw -> pixels of an image of `shape`."""
    sy, sx = shape[0] / frame[0], shape[1] / frame[1]
    return [Box(b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy, b.label) for b in boxes]


class Annotator:
    """Refinement, grounding and judge scores of curation items on one MLLMJudge engine, driven from
    synchronous code (a Ray Data stage) through the annotator's own event-loop thread."""

    def __init__(self, judge_cfg: JudgeConfig, cfg: AnnotateConfig) -> None:
        refine_prompt(cfg.refine_prompt)
        ground_prompt(cfg.ground_prompt)
        self.cfg = cfg
        self.judge = MLLMJudge(judge_cfg)
        self._processor: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="annotator-loop", daemon=True)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def load(self) -> None:
        """Start the engine (tens of seconds for the tiny judge on CPU)."""
        from transformers import AutoImageProcessor

        if not self._thread.is_alive():
            self._thread.start()
        self._run(self.judge.load())
        self._processor = AutoImageProcessor.from_pretrained(str(self.judge._model_path))  # noqa: SLF001

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self.judge.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def settings(self) -> dict[str, str]:
        """What a curation run records about its MLLM: the judge's settings and the prompt versions."""
        return {
            **self.judge.settings(),
            "refine_prompt": self.cfg.refine_prompt,
            "ground_prompt": self.cfg.ground_prompt,
            "refine_max_tokens": str(self.cfg.refine_max_tokens),
            "ground_max_tokens": str(self.cfg.ground_max_tokens),
        }

    def annotate(self, requests: list[AnnotationRequest]) -> list[Annotation]:
        """One Annotation per request, in order; raises JudgeEngineError when the engine fails."""
        if self._processor is None:
            raise RuntimeError("Annotator.annotate() called before load()")
        return self._run(self._annotate_all(requests))

    async def _annotate_all(self, requests: list[AnnotationRequest]) -> list[Annotation]:
        return list(await asyncio.gather(*(self._annotate(r) for r in requests)))

    async def _annotate(self, req: AnnotationRequest) -> Annotation:
        out = Annotation(req.item_id)
        if req.target_image is None:
            if self.cfg.ground:
                await self._ground(req, out)
            return out
        instruction = req.instruction
        if self.cfg.refine:
            await self._refine(req, out)
            if out.refined is not None:
                instruction = out.refined.instruction
        if self.cfg.judge:
            edit = DecodedEdit(
                edit_id=req.item_id,
                group_id=req.item_id,
                policy_version=0,
                instruction=instruction,
                source_image=req.source_image,
                edited_image=req.target_image,
                edit_mask=None,
            )
            (outcome,) = await self.judge.score([edit])
            out.judge_instruction = instruction
            if outcome.error is not None:
                out.judge_error = outcome.error
                out.errors.append(f"judge: {outcome.error}")
            else:
                out.judge_score = outcome.score
        return out

    async def _refine(self, req: AnnotationRequest, out: Annotation) -> None:
        size = self.judge.cfg.image_size
        assert req.target_image is not None  # _annotate refines only items with a target
        images = [resize_for_judge(req.source_image, size), resize_for_judge(req.target_image, size)]
        messages = build_messages(refine_prompt(self.cfg.refine_prompt), req.instruction)
        try:
            answer = await self.judge.generate_text(
                messages, images, self.cfg.refine_max_tokens, f"{req.item_id}-refine"
            )
        except JudgeError as e:  # the engine rejected this request only
            out.refine_error = str(e)
            out.errors.append(f"refine: {e}")
            return
        out.refine_answer = answer
        try:
            out.refined = parse_refinement(answer)
        except CurationParseError as e:
            out.refine_error = f"parse failure: {e}"
            out.errors.append(f"refine: {out.refine_error}")

    async def _ground(self, req: AnnotationRequest, out: Annotation) -> None:
        from PIL import Image

        height, width = req.source_image.shape[:2]
        fh, fw = grounding_frame(height, width, self.judge.cfg.image_size, self._processor)
        image = Image.fromarray(req.source_image).resize((fw, fh), Image.Resampling.BICUBIC)
        messages = build_messages(ground_prompt(self.cfg.ground_prompt), req.instruction, fw, fh)
        try:
            answer = await self.judge.generate_text(
                messages, [image], self.cfg.ground_max_tokens, f"{req.item_id}-ground"
            )
        except JudgeError as e:
            out.ground_error = str(e)
            out.errors.append(f"ground: {e}")
            return
        out.ground_answer = answer
        try:
            boxes = parse_grounding(answer, fw, fh)
        except CurationParseError as e:
            out.ground_error = f"parse failure: {e}"
            out.errors.append(f"ground: {out.ground_error}")
            return
        out.boxes = scale_boxes(boxes, (fh, fw), (height, width))
