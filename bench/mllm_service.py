"""MLLM judge: gRPC service vs. calling the vLLM engine in-process, on the tiny Qwen2.5-VL judge.

    .venv/bin/python bench/mllm_service.py [--rounds 4] [--concurrency 1 8 32] [--image-size 64]

One engine serves both paths (the server's judge object is also called directly on the server's event
loop), so the difference is the service overhead: PNG encode/decode, protobuf, gRPC, the server's
validation and concurrency limit. Each request carries one edit; N concurrent callers each send
`rounds` requests back to back. Prints edits/s and p50/p95 latency per path and the ratios
service/in-process (the target is within 1.2x at 32 concurrent).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _summary(latencies: list[float], wall_s: float) -> dict[str, float]:
    return {
        "edits_per_s": len(latencies) / wall_s,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p95_ms": 1e3 * _percentile(latencies, 0.95),
    }


async def _inprocess(judge, edits, concurrency: int, rounds: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []

    async def caller(i: int) -> None:
        for r in range(rounds):
            edit = edits[(i * rounds + r) % len(edits)]
            t0 = time.perf_counter()
            (out,) = await judge.score([edit])
            latencies.append(time.perf_counter() - t0)
            if out.error is not None:
                raise RuntimeError(f"in-process judge failed on {edit.edit_id}: {out.error}")

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return _summary(latencies, time.perf_counter() - t0)


def _service(client, edits, concurrency: int, rounds: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    def caller(i: int) -> list[float]:
        out = []
        for r in range(rounds):
            edit = edits[(i * rounds + r) % len(edits)]
            t0 = time.perf_counter()
            (res,) = client.score_request([edit])
            out.append(time.perf_counter() - t0)
            if res.error is not None:
                raise RuntimeError(f"judge service failed on {edit.edit_id}: {res.error}")
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        parts = list(pool.map(caller, range(concurrency)))
    return _summary([x for p in parts for x in p], time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="requests per concurrent caller")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--image-size", type=int, default=64, help="edit image size (pixels)")
    parser.add_argument("--judge-dir", default=None, help="tiny judge directory (default: a temp dir)")
    args = parser.parse_args()

    from cocoedit.loopback import apply_loopback_env

    apply_loopback_env()
    from cocoedit.rewards.base import DecodedEdit
    from cocoedit.rewards.client import RewardClient, make_edit
    from cocoedit.rewards.config import ClientConfig, JudgeConfig, ServerConfig
    from cocoedit.rewards.hosting import BackgroundServer
    from cocoedit.rewards.mllm import MLLMJudge
    from cocoedit.rewards.tiny_judge import build_tiny_judge

    tmp = tempfile.TemporaryDirectory()
    judge_dir = build_tiny_judge(Path(args.judge_dir or tmp.name) / "tiny_judge")
    cfg = JudgeConfig(
        model_path=str(judge_dir),
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.1,
        image_size=args.image_size,
    )
    rng = np.random.default_rng(0)
    size = args.image_size

    def fresh_edits(n: int) -> list[DecodedEdit]:
        # New images for every run: a repeated edit would hit vLLM's prefix and multimodal caches
        # and flatter whichever path runs second.
        return [
            DecodedEdit(
                edit_id=f"e{i}",
                group_id=f"g{i // 4}",
                policy_version=0,
                instruction="paint the square blue",
                source_image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                edited_image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                edit_mask=None,
            )
            for i in range(n)
        ]

    def wire(edits: list[DecodedEdit]) -> list:
        return [
            make_edit(e.edit_id, e.group_id, 0, e.instruction, e.source_image, e.edited_image) for e in edits
        ]

    server_cfg = ServerConfig(max_concurrent_calls=2 * max(args.concurrency), grace_s=1.0)
    t0 = time.perf_counter()
    with BackgroundServer(MLLMJudge(cfg), server_cfg) as srv:
        print(f"engine start + warm-up: {time.perf_counter() - t0:.1f} s")
        judge = srv.scorer
        client_cfg = ClientConfig(timeout_s=600.0, retries=0, batch_edits=1)
        with RewardClient([srv.address], client_cfg, "mllm") as client:
            client.wait_ready()
            srv.run_coroutine(_inprocess(judge, fresh_edits(4), 4, 1))  # warm both paths
            _service(client, wire(fresh_edits(4)), 4, 1)
            print(f"{'conc':>4} {'path':>10} {'edits/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
            for n in args.concurrency:
                inproc = srv.run_coroutine(_inprocess(judge, fresh_edits(n * args.rounds), n, args.rounds))
                service = _service(client, wire(fresh_edits(n * args.rounds)), n, args.rounds)
                for name, r in (("in-process", inproc), ("gRPC", service)):
                    print(f"{n:>4} {name:>10} {r['edits_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f}")
                print(
                    f"{n:>4} {'ratio':>10} service/in-process (>1 = service slower): time per edit "
                    f"{inproc['edits_per_s'] / service['edits_per_s']:.2f}x, p50 "
                    f"{service['p50_ms'] / inproc['p50_ms']:.2f}x, p95 {service['p95_ms'] / inproc['p95_ms']:.2f}x"
                )
    tmp.cleanup()


if __name__ == "__main__":
    main()
