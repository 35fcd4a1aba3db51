"""The MLLM judge reward S_mllm: a multimodal LLM served in-process by vLLM's async engine.

    judge = MLLMJudge(JudgeConfig(model_path="/models/Qwen2.5-VL-7B-Instruct"))
    await judge.load()                       # starts the engine, runs one warm-up request
    outcomes = await judge.score(edits)      # list[DecodedEdit] -> list[EditOutcome], in order
    await judge.close()

Served over gRPC by `cocoedit serve mllm [--model PATH]` (rewards/serve.py). Every edit is one engine
request; concurrent requests, from one call or many, are batched by vLLM's continuous batching. The
prompt and the score maths live in rewards/judge.py. With `model_path=None` the tiny Qwen2.5-VL of
rewards/tiny_judge.py is built (once) into `tiny_judge_dir` and served: the CPU test/dev path.

Errors: an answer that cannot be scored (no digit in the top-k, a request the engine rejects) is a
per-edit error. Text that still does not parse after `text_retries` gets the neutral
`text_fallback_score`, marked by the component `fallback` = 1 and a warning (the method's fallback;
rewards/weighting.py counts and bounds them per epoch). An engine failure or a request running past
`generate_timeout_s` raises `JudgeEngineError`, which the server returns as INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocoedit.ranges import check_fields
from cocoedit.rewards.base import FALLBACK, DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import JudgeConfig
from cocoedit.rewards.judge import (
    JudgeError,
    build_messages,
    digit_token_ids,
    parse_text_score,
    prompt_template,
    score_from_logprobs,
)

logger = logging.getLogger(__name__)


class JudgeEngineError(RuntimeError):
    """The vLLM engine failed or did not answer in time; the whole call fails (gRPC INTERNAL)."""


def _check_config(cfg: JudgeConfig) -> None:
    """The ranges JudgeConfig declares (checked here too: a judge can be built without the loader)."""
    check_fields(cfg, "rewards.mllm")
    if cfg.score_mode not in ("logits", "text"):
        raise ValueError(f"rewards.mllm.score_mode={cfg.score_mode!r} must be 'logits' or 'text'")
    prompt_template(cfg.prompt_version)


def resize_for_judge(image: np.ndarray, size: int) -> Any:
    """[H, W, 3] uint8 -> PIL RGB image whose longer side is `size` (aspect ratio kept)."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise JudgeError(f"judge images must be [H, W, 3] uint8, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image, mode="RGB")
    scale = size / max(h, w)
    if scale == 1.0:
        return pil
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return pil.resize(new, Image.Resampling.BICUBIC)


def resolve_model_path(cfg: JudgeConfig) -> Path:
    """cfg.model_path, or the tiny judge built into cfg.tiny_judge_dir when it is None."""
    if cfg.model_path is None:
        from cocoedit.rewards.tiny_judge import build_tiny_judge

        return build_tiny_judge(Path(os.path.expanduser(cfg.tiny_judge_dir)))
    path = Path(os.path.expanduser(cfg.model_path))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"rewards.mllm.model_path={cfg.model_path!r} is not a local HF model directory (no config.json); "
            "download the judge (e.g. Qwen2.5-VL-7B-Instruct) to a local path, or leave model_path unset for "
            "the tiny CPU judge"
        )
    return path


class MLLMJudge(Scorer):
    """Scores each edit with an MLLM judge on vLLM (docs/algorithm.md section 3, S_mllm)."""

    service = "mllm"
    score_name = "mllm"
    needs_instruction = True  # the server turns an empty instruction into a per-edit error

    def __init__(self, cfg: JudgeConfig) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self._engine: Any = None  # vllm AsyncLLM, set by load()
        self._tokenizer: Any = None
        self._digit_ids: Optional[list[int]] = None
        self._model_path: Optional[Path] = None
        self._enforce_eager: Optional[bool] = None
        self._owns_engine = True

    def share_engine(self, cfg: JudgeConfig) -> MLLMJudge:
        """A judge with other scoring settings (score_mode, prompt, sampling, timeout) on this judge's
        loaded engine, e.g. to compare score modes without loading the model twice. It must be used on
        the event loop that loaded this judge, and closing it leaves the engine running."""
        if self._engine is None:
            raise RuntimeError("share_engine() needs a loaded judge; await judge.load() first")
        engine_keys = (
            "model_path",
            "dtype",
            "max_model_len",
            "images_per_prompt",
            "tensor_parallel_size",
            "seed",
        )
        changed = [k for k in engine_keys if getattr(cfg, k) != getattr(self.cfg, k)]
        if changed:
            raise ValueError(f"share_engine() cannot change engine settings {changed}; start another judge")
        other = MLLMJudge(cfg)
        other._engine, other._tokenizer, other._model_path = self._engine, self._tokenizer, self._model_path
        other._enforce_eager, other._owns_engine = self._enforce_eager, False
        if cfg.score_mode == "logits":
            other._digit_ids = digit_token_ids(self._tokenizer)
        return other

    def engine_args(self, model_path: Path) -> Any:
        """The vLLM AsyncEngineArgs this judge starts its engine with."""
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform

        cfg = self.cfg
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else current_platform.is_cpu()
        self._enforce_eager = eager
        # The executor is left to vLLM: on CPU, running the worker inside the engine-core process
        # ("uni") starts one process fewer, but scored 3-6x fewer edits/s here (no OMP thread binding).
        return AsyncEngineArgs(
            model=str(model_path),
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            limit_mm_per_prompt={"image": cfg.images_per_prompt},
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=eager,
            seed=cfg.seed,
            max_logprobs=max(cfg.logprobs_k, 20),
            disable_log_stats=True,
        )

    async def load(self) -> None:
        """Build/locate the model, start the async engine off the event loop, run one warm-up edit."""
        if self._engine is not None:
            return
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self._model_path = await asyncio.to_thread(resolve_model_path, self.cfg)
        self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(self._model_path))
        if self.cfg.score_mode == "logits":
            self._digit_ids = digit_token_ids(self._tokenizer)
        args = self.engine_args(self._model_path)
        # Engine start spawns processes and blocks for tens of seconds: keep the loop (health) responsive.
        self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        rng = np.random.default_rng(self.cfg.seed)
        source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        warmup = DecodedEdit(
            edit_id="warm-up",
            group_id="warm-up",
            policy_version=0,
            instruction="make the image brighter",
            source_image=source,
            edited_image=np.clip(source.astype(np.int16) + 40, 0, 255).astype(np.uint8),
            edit_mask=None,
        )
        try:
            await self._score_one(warmup)
        except JudgeError as e:
            # The engine answered; only this answer was unusable. Scoring can still go ahead.
            logger.warning("MLLM judge warm-up answer could not be scored: %s", e)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            if self._owns_engine:
                # On the loop, not in a thread: the engine's output handler must not run between the
                # engine process exiting and its cancellation (it would log EngineDeadError).
                engine.shutdown()

    def settings(self) -> dict[str, str]:
        cfg = self.cfg
        out = {
            "model_path": str(self._model_path) if self._model_path else str(cfg.model_path or "tiny"),
            "score_mode": cfg.score_mode,
            "prompt_version": cfg.prompt_version,
            "image_order": "source,edited",
            "image_size": str(cfg.image_size),
            "dtype": cfg.dtype,
            "seed": str(cfg.seed),
            "tensor_parallel_size": str(cfg.tensor_parallel_size),
            "generate_timeout_s": str(cfg.generate_timeout_s),
        }
        if cfg.score_mode == "logits":
            out["logprobs_k"] = str(cfg.logprobs_k)
        else:
            out.update(temperature=str(cfg.temperature), max_tokens=str(cfg.max_tokens))
            out["text_retries"] = str(cfg.text_retries)
        return out

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        """One outcome per edit, in order; raises JudgeEngineError when the engine fails."""
        if self._engine is None:
            raise RuntimeError("MLLMJudge.score() called before load(); await judge.load() first")
        results = await asyncio.gather(*(self._score_one(e) for e in edits), return_exceptions=True)
        outcomes = []
        for edit, res in zip(edits, results, strict=True):
            if isinstance(res, JudgeError):
                outcomes.append(
                    EditOutcome(edit_id=edit.edit_id, error=str(res), warnings=list(edit.warnings))
                )
            elif isinstance(res, BaseException):
                raise res
            else:
                outcomes.append(res)
        return outcomes

    def prompt(self, instruction: str) -> str:
        """The chat prompt text (with image placeholders) the engine receives for `instruction`."""
        messages = build_messages(instruction, self.cfg.prompt_version)
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    async def generate_text(
        self, messages: list[dict[str, Any]], images: list[Any], max_tokens: int, tag: str
    ) -> str:
        """The engine's greedy (temperature 0) answer to chat `messages` whose image placeholders take
        `images` (PIL, in order), for prompts other than the judge's own (data curation). A request the
        engine rejects raises JudgeError; an engine failure or timeout JudgeEngineError."""
        from vllm import SamplingParams

        if self._engine is None:
            raise RuntimeError("MLLMJudge.generate_text() called before load(); await judge.load() first")
        prompt = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        request = {"prompt": prompt, "multi_modal_data": {"image": images}}
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=self.cfg.seed)
        return (await self._generate(request, params, tag)).outputs[0].text

    async def _score_one(self, edit: DecodedEdit) -> EditOutcome:
        images = [
            resize_for_judge(edit.source_image, self.cfg.image_size),
            resize_for_judge(edit.edited_image, self.cfg.image_size),
        ]  # the order the prompt's image placeholders expect: source, then edited
        request = {"prompt": self.prompt(edit.instruction), "multi_modal_data": {"image": images}}
        if self.cfg.score_mode == "logits":
            return await self._score_logits(edit, request)
        return await self._score_text(edit, request)

    async def _score_logits(self, edit: DecodedEdit, request: dict[str, Any]) -> EditOutcome:
        from vllm import SamplingParams

        # The log-probabilities are the model's raw ones, so temperature does not change the score.
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=self.cfg.logprobs_k, seed=self.cfg.seed
        )
        out = await self._generate(request, params, edit.edit_id)
        logprobs = out.outputs[0].logprobs
        if not logprobs:
            raise JudgeEngineError(
                f"vLLM returned no logprobs for edit {edit.edit_id!r} although logprobs were requested"
            )
        top = {tid: lp.logprob for tid, lp in logprobs[0].items()}
        assert self._digit_ids is not None
        s = score_from_logprobs(top, self._digit_ids)
        return EditOutcome(
            edit_id=edit.edit_id,
            score=s.score,
            components={
                "expected_score": s.expected_score,
                "p_top": s.p_top,
                "digit_mass": s.digit_mass,
                "digits_present": float(s.digits_present),
            },
            warnings=list(edit.warnings),
        )

    async def _score_text(self, edit: DecodedEdit, request: dict[str, Any]) -> EditOutcome:
        from vllm import SamplingParams

        answers = []
        for attempt in range(self.cfg.text_retries):
            # A fixed seed per attempt: the same edit gets the same answers, retries get new samples.
            params = SamplingParams(
                max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature, seed=self.cfg.seed + attempt
            )
            out = await self._generate(request, params, edit.edit_id)
            answer = out.outputs[0].text
            answers.append(answer)
            try:
                score = parse_text_score(answer)
            except JudgeError:
                continue
            return EditOutcome(
                edit_id=edit.edit_id,
                score=score,
                components={
                    "expected_score": score * 5,
                    "raw": score * 5,
                    "attempts": float(attempt + 1),
                    FALLBACK: 0.0,
                },
                warnings=list(edit.warnings),
            )
        # The method's neutral score, marked and counted (rewards/weighting.py bounds how many an epoch
        # may have), so one unparseable answer never stops training but a broken judge still does.
        fallback = self.cfg.text_fallback_score
        why = f"parse failure: no number in [0, 5] in any of {len(answers)} judge answers {answers!r}"
        logger.warning("edit %s: %s; neutral fallback score %g", edit.edit_id, why, fallback)
        return EditOutcome(
            edit_id=edit.edit_id,
            score=fallback,
            components={"expected_score": fallback * 5, "attempts": float(len(answers)), FALLBACK: 1.0},
            warnings=[*edit.warnings, f"{why}; scored with the neutral fallback {fallback:g}"],
        )

    async def _generate(self, request: dict[str, Any], params: Any, edit_id: str) -> Any:
        """The final RequestOutput of one engine request, within generate_timeout_s."""
        from vllm.exceptions import VLLMClientError

        async def run() -> Any:
            final = None
            request_id = f"{edit_id}-{uuid.uuid4().hex[:12]}"
            async for out in self._engine.generate(request, params, request_id):
                final = out
            return final

        async def run_with_resend() -> Any:
            # After an aborted request vLLM's frontend and engine multimodal caches can disagree; the
            # engine then ends the next request for those images with finish_reason "error" and asks
            # for a resend with the image data, which the second attempt does.
            final = await run()
            if final is not None and final.outputs and final.outputs[0].finish_reason == "error":
                final = await run()
            return final

        timeout_s = self.cfg.generate_timeout_s
        timed_out = (
            f"vLLM request for edit {edit_id!r} got no answer within rewards.mllm.generate_timeout_s="
            f"{timeout_s}; the engine is stuck or overloaded (fewer concurrent calls, more replicas, or "
            "a larger timeout)"
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            final = await asyncio.wait_for(run_with_resend(), timeout=timeout_s)
        except asyncio.TimeoutError as e:
            raise JudgeEngineError(timed_out) from e
        except (VLLMClientError, ValueError) as e:
            # The request itself was rejected (e.g. longer than max_model_len): this edit only.
            raise JudgeError(f"the judge engine rejected edit {edit_id!r}: {e}") from e
        except Exception as e:
            raise JudgeEngineError(f"vLLM engine failed on edit {edit_id!r}: {type(e).__name__}: {e}") from e
        if final is None or not final.outputs:
            raise JudgeEngineError(f"vLLM finished the request for edit {edit_id!r} without an output")
        reason = final.outputs[0].finish_reason
        if reason in ("abort", "error"):
            # The timeout's cancellation can race with vLLM's abort, which then ends the stream with
            # an aborted/errored output instead of letting wait_for raise.
            if loop.time() - start >= timeout_s:
                raise JudgeEngineError(timed_out)
            raise JudgeEngineError(
                f"vLLM ended the request for edit {edit_id!r} with finish_reason={reason!r}"
            )
        return final
