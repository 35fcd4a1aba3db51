"""The benchmark judge: an MLLM on vLLM's async engine answering the GEdit / ImgEdit questions of
rewards/eval_prompts.py with free text (JSON), for `cocoedit eval`.

    judge = BenchJudge(JudgeConfig(model_path="/models/Qwen2.5-VL-7B-Instruct"), max_tokens=256)
    await judge.load()
    results = await judge.judge(edits, protocol="gedit")     # one JudgedEdit per edit, in order
    await judge.close()

The engine is started exactly as the training judge starts it (`MLLMJudge.engine_args`, the tiny
Qwen2.5-VL when `model_path` is None), but the requests differ: several images per question, text
answers of up to `max_tokens`, `attempts` tries per question with seeds seed, seed + 1, ... An answer
that does not parse after the last attempt makes that edit a counted failure with the answers kept.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocoedit.rewards.config import JudgeConfig
from cocoedit.rewards.eval_prompts import (
    PROMPT_VERSION,
    AnswerParseError,
    Question,
    build_messages,
    gedit_item_scores,
    imgedit_item_scores,
    parse_json_answer,
    questions,
)
from cocoedit.rewards.mllm import JudgeEngineError, MLLMJudge, resize_for_judge, resolve_model_path


class RequestRejected(ValueError):
    """The engine refused one request (e.g. longer than max_model_len): a failure of that edit only."""


@dataclass
class JudgeInput:
    """One edit to judge: images [H, W, 3] uint8, the instruction and its task / edit type."""

    item_id: str
    instruction: str
    task: str
    source_image: np.ndarray
    edited_image: np.ndarray


@dataclass
class JudgedEdit:
    """Scores of one edit (protocol keys, e.g. sc/pq/o), or the error and the raw answers; never both."""

    item_id: str
    scores: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    answers: dict[str, list[str]] = field(default_factory=dict)  # question name -> raw answers


class BenchJudge:
    """Asks an MLLM the benchmark questions of each edit and parses its JSON answers."""

    def __init__(
        self, cfg: JudgeConfig, max_tokens: int = 256, temperature: float = 0.0, attempts: int = 1
    ) -> None:
        if max_tokens < 1 or attempts < 1:
            raise ValueError(
                f"eval.judge_max_tokens={max_tokens} and eval.judge_attempts={attempts} must be >= 1"
            )
        self.cfg = cfg
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.attempts = attempts
        self._engine: Any = None
        self._tokenizer: Any = None
        self.model_path: Optional[Path] = None

    async def load(self) -> None:
        if self._engine is not None:
            return
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_path = await asyncio.to_thread(resolve_model_path, self.cfg)
        self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(self.model_path))
        args = MLLMJudge(self.cfg).engine_args(self.model_path)
        self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.shutdown)

    def settings(self) -> dict[str, str]:
        return {
            "model_path": str(self.model_path or self.cfg.model_path or "tiny"),
            "prompt_version": PROMPT_VERSION,
            "max_tokens": str(self.max_tokens),
            "temperature": str(self.temperature),
            "attempts": str(self.attempts),
            "image_size": str(self.cfg.image_size),
            "seed": str(self.cfg.seed),
        }

    async def judge(self, edits: list[JudgeInput], protocol: str) -> list[JudgedEdit]:
        """One JudgedEdit per edit, in order; raises JudgeEngineError when the engine fails."""
        if self._engine is None:
            raise RuntimeError("BenchJudge.judge() called before load(); await judge.load() first")
        return list(await asyncio.gather(*(self._judge_one(e, protocol) for e in edits)))

    async def _judge_one(self, edit: JudgeInput, protocol: str) -> JudgedEdit:
        out = JudgedEdit(edit.item_id)
        parsed: dict[str, list[float]] = {}
        qs = questions(protocol, edit.instruction, edit.task)
        results = await asyncio.gather(*(self._ask(edit, q) for q in qs))
        errors = []
        for q, (values, answers, error) in zip(qs, results, strict=True):
            out.answers[q.name] = answers
            if error is not None:
                errors.append(f"{q.name}: {error}")
            else:
                parsed[q.name] = values
        if errors:
            out.error = "; ".join(errors)
            return out
        if protocol == "gedit":
            out.scores = gedit_item_scores(parsed["sc"], parsed["pq"])
        else:
            out.scores = imgedit_item_scores(parsed["imgedit"])
        return out

    async def _ask(self, edit: JudgeInput, q: Question) -> tuple[list[float], list[str], Optional[str]]:
        from vllm import SamplingParams

        pictures = {"source": edit.source_image, "edited": edit.edited_image}
        images = [resize_for_judge(pictures[name], self.cfg.image_size) for name in q.images]
        prompt = self._tokenizer.apply_chat_template(
            build_messages(q), tokenize=False, add_generation_prompt=True
        )
        request = {"prompt": prompt, "multi_modal_data": {"image": images}}
        answers: list[str] = []
        error = "no attempt made"
        for attempt in range(self.attempts):
            params = SamplingParams(
                max_tokens=self.max_tokens, temperature=self.temperature, seed=self.cfg.seed + attempt
            )
            try:
                answer = await self._generate(request, params, f"{edit.item_id}-{q.name}")
            except RequestRejected as e:
                return [], answers, str(e)
            answers.append(answer)
            try:
                return parse_json_answer(answer, q), answers, None
            except AnswerParseError as e:
                error = f"parse failure after {attempt + 1} attempt(s): {e}"
        return [], answers, error

    async def _generate(self, request: dict[str, Any], params: Any, tag: str) -> str:
        from vllm.exceptions import VLLMClientError

        request_id = f"{tag}-{uuid.uuid4().hex[:12]}"

        async def run() -> Any:
            final = None
            async for out in self._engine.generate(request, params, request_id):
                final = out
            return final

        try:
            final = await asyncio.wait_for(run(), timeout=self.cfg.generate_timeout_s)
        except asyncio.TimeoutError as e:
            raise JudgeEngineError(
                f"vLLM request {tag!r} got no answer within rewards.mllm.generate_timeout_s="
                f"{self.cfg.generate_timeout_s}"
            ) from e
        except (VLLMClientError, ValueError) as e:
            raise RequestRejected(f"the judge engine rejected request {tag!r}: {e}") from e
        if final is None or not final.outputs:
            raise JudgeEngineError(f"vLLM finished request {tag!r} without an output")
        return final.outputs[0].text
