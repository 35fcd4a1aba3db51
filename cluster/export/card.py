"""The model card of a trained LoRA: `RUN_DIR/lora/README.md`, next to the weights it describes, written
with huggingface_hub's ModelCard / ModelCardData (so the Hub and `ModelCard.load` parse it).

    write_card(cfg, RUN_DIR / "lora", epochs_done, learner_step, final_eval)

It states the base model and family, the training resolution, epochs and optimizer steps, the rewards and
their weights, the regularizer settings, the final evaluation on the fixed held-out set (mean and 95%
interval over its items), the license, and the stock diffusers call that reproduces `cocoedit edit`
(height, width and, for FLUX.1-Kontext, `max_area` and `_auto_resize=False`: without them the stock
pipeline resizes to about a megapixel whatever the LoRA was trained at).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from cocoedit.actors.policies import FAMILIES, family
from cocoedit.cluster.config import Config
from cocoedit.learner.schedule import describe

CARD = "README.md"  # the Hub reads a repository's card from here
# The published base model of each family on the Hub, and its license (the LoRA is a derivative).
BASE_MODELS = {
    "flux_kontext": ("black-forest-labs/FLUX.1-Kontext-dev", "other", "flux-1-dev-non-commercial-license"),
    "qwen_image_edit": ("Qwen/Qwen-Image-Edit", "apache-2.0", None),
    "qwen_image_edit_plus": ("Qwen/Qwen-Image-Edit-2509", "apache-2.0", None),
}
TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

A LoRA of {{ base }} ({{ family }}) post-trained with cocoedit (CoCoEdit's region-regularized
DiffusionNFT): the edit follows its instruction and leaves the rest of the image alone.

| | |
|---|---|
| base model | {{ base }} (family `{{ family }}`, pipeline `{{ pipeline }}`) |
| training resolution | {{ size }}x{{ size }} px |
| training | {{ epochs }} epochs, {{ steps }} optimizer steps; LoRA rank {{ rank }}, alpha {{ alpha }}; lr {{ lr }} |
| rewards | {{ rewards }} |
| regularizer | {{ regularizer }} |
| license | {{ license }} |

## Final evaluation

{{ evaluation }}

## Use with diffusers

The call `cocoedit edit --model BASE --lora DIR --image IN --instruction TEXT --out OUT` makes, on a
{{ size }}x{{ size }} input (`cocoedit edit --size {{ size }}` crops and resizes any image to it):

```python
{{ snippet }}
```
"""


def stock_call(cfg: Config, size: int, max_sequence_length: int = 512) -> str:
    """Python that reproduces `cocoedit edit` with the stock pipeline (actors/edit.py's arguments)."""
    fam = family(cfg.policy.family)
    pipe = SimpleNamespace(tokenizer_2=SimpleNamespace(model_max_length=max_sequence_length))
    extra = fam.policy_class().stock_call_kwargs(pipe, size, size, fam.guidance)
    args = "".join(f"    {k}={v!r},\n" for k, v in extra.items())
    base = cfg.policy.model_path or BASE_MODELS.get(cfg.policy.family, ("(the base model)",))[0]
    return (
        "import torch\n"
        f"from diffusers import {fam.pipeline}\n"
        "from diffusers.utils import load_image\n\n"
        f"base_model = {json.dumps(base)}\n"
        'lora = "."  # this folder, or the Hub repository it was pushed to\n'
        f'source = "in.png"  # {size}x{size} RGB\n'
        'instruction = "make the car red"\n\n'
        'dtype, device = (torch.bfloat16, "cuda") if torch.cuda.is_available() else (torch.float32, "cpu")\n'
        f"pipe = {fam.pipeline}.from_pretrained(base_model, dtype=dtype).to(device)\n"
        "pipe.load_lora_weights(lora)\n"
        "edited = pipe(\n"
        "    image=load_image(source),\n"
        "    prompt=instruction,\n"
        f"    height={size},\n"
        f"    width={size},\n"
        "    generator=torch.Generator().manual_seed(0),\n"
        f"{args}"
        ").images[0]\n"
        'edited.save("out.png")'
    )


def interval(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t interval (NaN for one value), n) of the finite values."""
    from scipy.stats import t

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan, len(v)
    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)


def per_item(group_ids: Sequence[str], values: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Each metric averaged over the noise seeds of each item (the items are the independent units)."""
    order = list(dict.fromkeys(group_ids))
    out: dict[str, list[float]] = {}
    for name, v in values.items():
        out[name] = [float(np.nanmean([v[i] for i, g in enumerate(group_ids) if g == k])) for k in order]
    return out


def write_card(
    cfg: Config,
    lora_dir: str | Path,
    epochs_done: int,
    learner_step: Optional[int],
    final_eval: Optional[dict[str, list[float]]] = None,
    max_sequence_length: int = 512,
) -> Path:
    """Write `lora_dir/README.md`; final_eval: metric -> per-item values of the last fixed-set evaluation."""
    from huggingface_hub import ModelCard, ModelCardData

    name = cfg.run.name
    # a family registered elsewhere (README, Extending) names its base model by its local path
    hub_base, license_id, license_name = BASE_MODELS.get(
        cfg.policy.family, (cfg.policy.model_path or "(the base model)", "other", "the base model's license")
    )
    tiny = cfg.run.tiny and cfg.policy.model_path is not None and "tiny-editor" in cfg.policy.model_path
    base = "the tiny editor built by `cocoedit pretrain-tiny`" if tiny else hub_base
    if tiny:
        license_id, license_name = "apache-2.0", None  # built from scratch by this project
    lr = cfg.learner
    schedule = f" ({describe(lr)}, `learner.lam_schedule`)" if lr.lam_schedule != "constant" else ""
    weights = ", ".join(f"{k} {v:g}" for k, v in cfg.rewards.weights.items())
    if final_eval:
        rows = ["| metric (fixed held-out set) | mean | 95% interval | items |", "|---|---|---|---|"]
        for metric, values in final_eval.items():
            mean, half, n = interval(values)
            rows.append(
                f"| {metric} | {mean:.4f} | {'n/a' if math.isnan(half) else f'+- {half:.4f}'} | {n} |"
            )
        evaluation = (
            f"After the last epoch, the policy edited {cfg.run.eval_items} items held out of training x "
            f"{cfg.run.eval_seeds} noise seeds; each item's seeds are averaged, the interval is Student-t over "
            "the items.\n\n" + "\n".join(rows)
        )
    else:
        evaluation = "None recorded for this checkpoint (`run.eval_every`; `metrics.jsonl` has every eval/*)."
    data = ModelCardData(
        license=license_id,
        license_name=license_name,
        base_model=None if tiny else hub_base,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=["lora", "image-editing", "cocoedit", cfg.policy.family, "diffusers"],
        model_name=name,
    )
    card = ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        name=name,
        base=base,
        family=cfg.policy.family,
        pipeline=FAMILIES[cfg.policy.family].pipeline,
        size=cfg.data.image_size,
        epochs=epochs_done,
        steps="?" if learner_step is None else learner_step,
        rank=cfg.policy.lora_rank,
        alpha=cfg.policy.lora_alpha,
        lr=f"{lr.lr:g}",
        rewards=f"R = weighted sum of {weights} (`rewards.weights`)",
        regularizer=(
            f"lam_pos {lr.lam_pos:g}, lam_neg {lr.lam_neg:g}{schedule}, reg_pos_target {lr.reg_pos_target}, "
            f"reg_neg_target {lr.reg_neg_target}, erode_radius {lr.erode_radius}, objective {lr.objective}"
        ),
        license=license_id if license_name is None else f"{license_name} (the base model's)",
        evaluation=evaluation,
        snippet=stock_call(cfg, cfg.data.image_size, max_sequence_length),
    )
    path = Path(lora_dir) / CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(str(path))
    return path


def tokenizer_limit(model_path: Optional[str]) -> int:
    """min(512, model_max_length of the model's tokenizer_2) as FLUX-Kontext's stock call uses; 512 when
    the model is not a local directory."""
    cfg = Path(model_path or "") / "tokenizer_2" / "tokenizer_config.json"
    if model_path and cfg.is_file():
        return min(512, int(json.loads(cfg.read_text()).get("model_max_length", 512)))
    return 512


def card_inputs(
    run_cfg: Config, last_eval: Optional[tuple[list[str], Any]]
) -> Optional[dict[str, list[float]]]:
    """Per-item final evaluation of a run: the reward, each score and its components (psnr, ssim, ...)."""
    if last_eval is None:
        return None
    group_ids, scores = last_eval
    values = {"reward": scores.rewards.total, **scores.rewards.parts}
    return per_item(group_ids, values)
