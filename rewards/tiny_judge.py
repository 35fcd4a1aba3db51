"""A tiny Qwen2.5-VL judge built in code, saved as a local HF directory that vLLM loads (CPU tests).

    from cocoedit.rewards.tiny_judge import build_tiny_judge
    path = build_tiny_judge("/tmp/tiny_judge")   # ~5 MB, a few seconds; idempotent

The weights are random, so its scores mean nothing; what is real is everything around them: the
Qwen2.5-VL architecture as vLLM runs it, the image processor, a BPE tokenizer with the digits "0".."9"
as single tokens and the Qwen chat special tokens, and the chat template. Shapes follow docs/architecture.md (Machine facts): text
hidden 128, 2 heads of head_dim 64 (head_dim 16 fails in vLLM's CPU attention), 2 layers, vision
depth 2. The output rows of the digit tokens are scaled up so that, like a real judge asked for a
number, the first generated token is almost always a digit (the digits sit in vLLM's top-k logprobs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union, cast

# Written last by build_tiny_judge: its presence (with a matching recipe) marks a complete directory.
_MARKER = "cocoedit_tiny_judge.json"
_RECIPE_VERSION = 2
_CONST_DIM_VALUE = 0.3
_DIGIT_ROW_SCALE = 5.0
_ANSWER_BIAS = 1.5

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The Qwen2.5-VL chat template, reduced to what the judge uses: string or list content, images as
# <|vision_start|><|image_pad|><|vision_end|> (vLLM expands the pad to the image's token count).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a strict judge of image edits. Compare the source image and the edited image.",
    "Instruction: change the color of the red square to blue. Score the edit from 0 to 5.",
    "0: wrong object edited or edit fails; 1: the right object but the edit barely follows the instruction;",
    "2: partly follows the instruction; 3: follows it with clear flaws; 4: correct with minor flaws;",
    "5: correct object, requirements met, high visual quality; answer with the number only.",
    "Score: 3.5. I'd say 4. The answer is 5. 0 1 2 3 4 5 6 7 8 9 10",
    "add a hat to the cat, remove the tree, replace the sky with a sunset, make the circle larger,",
    "turn the background white, move the triangle to the left, the texture of the stripes is wrong.",
    "Source image: Edited image: system user assistant You are a helpful assistant.",
]


def _tokenizer_object(vocab_size: int):
    """A byte-level BPE tokenizer whose pre-tokenizer isolates every digit (as Qwen's does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def _is_complete(out: Path) -> bool:
    marker = out / _MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("recipe_version") == _RECIPE_VERSION


def build_tiny_judge(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """Build the tiny judge into `out_dir` (created) and return it; skip when already complete.

    The directory holds config.json, model.safetensors (float32), the tokenizer with its chat
    template, and the Qwen2.5-VL processor configs: everything `vllm` and `transformers` load.
    """
    out = Path(out_dir)
    if _is_complete(out):
        return out
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    tok_obj = _tokenizer_object(vocab_size=512)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: cast(int, tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}  # one token: one id
    digit_ids = []
    for d in "0123456789":
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise RuntimeError(f"tiny judge tokenizer split digit {d!r} into {enc}; the BPE recipe is broken")
        digit_ids.append(enc[0])

    vocab_size = len(tokenizer)
    hidden = 128
    config = Qwen2_5_VLConfig(  # type: ignore[call-arg]  # token ids go through __post_init__(**kwargs)
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval().to(torch.float32)
    with torch.no_grad():
        # Judge-like answers from random weights: every text token carries a constant on hidden dim 0,
        # which the output rows of "0".."5" and <|im_end|> read, so the first answer token is a digit
        # 0-5 (image-dependent through the rest of the rows) and an answer tends to stop after it.
        model.get_input_embeddings().weight[:, 0] = _CONST_DIM_VALUE
        head = model.get_output_embeddings().weight  # [vocab, hidden]
        head[digit_ids[:6]] *= _DIGIT_ROW_SCALE
        head[digit_ids[:6] + [ids["<|im_end|>"]], 0] = _ANSWER_BIAS
    model.save_pretrained(out, safe_serialization=True)

    # Small images: 28x28 .. 112x112 pixels, i.e. 1..16 tokens per image after the 2x2 merge.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112)
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"recipe_version": _RECIPE_VERSION, "seed": seed}))
    return out
