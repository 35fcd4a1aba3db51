"""Checks the time plan's model of work on this machine: measured CPU time against the FLOPs the plan
predicts (cluster/plan/work.py), for sampling (one transformer forward), VAE decode and the learner
step (forward + backward through the LoRA), on the real-dims editor of `cocoedit train --dry-run`
(published widths, random weights, float32, built once into $COCOEDIT_CACHE). Prints numbers; asserts
nothing. If the model of work is right, CPU seconds per TFLOP is about the same for every phase.

    .venv/bin/python bench/time_check.py [--family flux_kontext] [--depth 1] [--size 256] [--text-tokens 64]

CPU time (time.process_time, all threads of this process), not wall time: the machine is shared, and
other jobs stretch wall time far more than CPU time. Each phase runs --repeats times after one warm-up
call; the minimum counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: allocator, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="flux_kontext")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--text-tokens", type=int, default=64, help="policy.max_sequence_length")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help="the learner step with recomputation")
    args = parser.parse_args()

    import torch

    from cocoedit.actors.config import PolicyConfig
    from cocoedit.actors.policies import load_policy
    from cocoedit.cluster.plan.model import policy_model
    from cocoedit.cluster.plan.work import transformer_flops, vae_flops
    from cocoedit.cluster.train.dryrun import real_editor

    path = real_editor(args.family, args.depth)
    cfg = PolicyConfig(
        family=args.family,
        model_path=str(path),
        dtype="float32",
        device="cpu",
        max_sequence_length=args.text_tokens,
        gradient_checkpointing=args.checkpointing,
    )
    policy = load_policy(cfg)
    model = policy_model(args.family, str(path))
    size = args.size
    tokens = model.text_tokens(args.text_tokens)
    predicted = {
        "sampling (1 forward)": transformer_flops(model, cfg, size, tokens, grad=False, checkpointing=False),
        "VAE decode": vae_flops(model, size, decode=True),
        "learner step (forward + backward)": transformer_flops(
            model, cfg, size, tokens, grad=True, checkpointing=args.checkpointing
        ),
    }

    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g)
    # an instruction long enough to fill the text tokens the plan counts (FLUX pads T5 to them anyway)
    cond = policy.encode_condition(["replace the red square by a blue circle " * 8], source)
    length, dim = policy.latent_shape(size, size)
    x = torch.randn(1, length, dim, generator=g)
    t = torch.full((1,), 0.7)

    def sample() -> None:
        with torch.no_grad(), policy.adapter("old"):
            policy.velocity(x, t, cond)

    def decode() -> None:
        policy.decode(x, size, size)

    def learn() -> None:
        policy.transformer.train()
        with policy.adapter("default"):
            v = policy.velocity(x, t, cond)
            v.square().mean().backward()
        policy.transformer.eval()
        for p in policy.trainable_parameters():
            p.grad = None

    measured = {}
    for name, fn in zip(predicted, (sample, decode, learn), strict=True):
        measured[name] = cpu_seconds(fn, args.repeats)

    print(
        f"{args.family} real dims depth {args.depth}, {size}x{size} px, {tokens} text tokens, float32, "
        f"{torch.get_num_threads()} threads; minimum of {args.repeats} after a warm-up"
    )
    first = None
    for name in predicted:
        rate = predicted[name] / measured[name] / 1e9
        first = first or rate
        print(
            f"  {name:<36} predicted {predicted[name] / 1e12:7.3f} TFLOP  measured {measured[name]:7.2f} CPU s  "
            f"{rate:6.1f} GFLOP per CPU s  ({rate / first:.2f} x sampling's)"
        )


if __name__ == "__main__":
    main()
