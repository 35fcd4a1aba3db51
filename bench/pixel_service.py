"""Throughput of the pixel reward: scikit-image vs the project in process vs the gRPC service, in one run.

    .venv/bin/python bench/pixel_service.py [--edits 64] [--size 512] [--runs 3] [--threads 2]
                                            [--group-size 1 12]

Each of --runs rounds measures, back to back on the same photo-like edits:
  (a) the keep-only reference with scikit-image (masked_psnr_ssim_reference), one edit at a time;
  (b) the project's S_pix in process: PixelScorer.score_sync on decoded edits, --threads threads;
  (c) RewardClient.score through a `cocoedit serve pixel` subprocess on 127.0.0.1: the request's
      bytes, protobuf parsing, PNG header checks, decoding, validation, scoring and the reply
      (encoding the PNGs on the client is timed separately);
  (d) decoding and validating the same edits in process (edits.decode_edit, each edit with its own
      source and mask), one thread: the part of (c) that is not scoring and not the wire; and (d
      shared) the same edits as the server decodes them (edits.RequestEdits.decode, planned before
      the clock starts: a group's source and mask once for its edits);
and prints per round edits/s and CPU ms per edit, then min/median/max over the rounds of the ratios
b/a and c/a (edits/s, wall clock) and of c/b in CPU time per edit, for the server process alone (the
service's cost: decode + validate + score + reply) and with the client's CPU added.

--group-size G (one or more values; default 1, each edit with its own source and mask as before):
(c) sends the edits as groups of G edits of one source and mask (`ScoreRequest.groups`, the way
rollout workers send them: cluster/train/scores.py to_groups), each G in every round against the same
server; (a) and (b) run once per round, on the first G's edits. With several G it also prints the
ratio of the server's CPU per edit between each G and the first.

Roofline: the FLOPs of one edit (16 separable Gaussian filter planes of `window` taps, two passes,
a multiply and an add per tap, plus ~80 element-wise FLOPs per pixel), against the machine's
single-core GFLOP/s on that same filter (cv2.sepFilter2D on float32 row bands, CPU time, measured in
the same run): the fraction of that rate reached per CPU second by (b) and by the server in (c).
Wall-clock ratios on a shared machine are upper bounds of the slowdown; CPU ratios are steadier.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoedit.loopback import apply_loopback_env, free_port  # noqa: E402
from cocoedit.protos import reward_pb2  # noqa: E402
from cocoedit.rewards.base import DecodedEdit  # noqa: E402
from cocoedit.rewards.client import RewardClient, make_edit, wire_image, wire_mask  # noqa: E402
from cocoedit.rewards.config import ClientConfig, PixelConfig  # noqa: E402
from cocoedit.rewards.edits import RequestEdits, decode_edit, expand_groups  # noqa: E402
from cocoedit.rewards.metrics import masked_psnr_ssim_reference  # noqa: E402
from cocoedit.rewards.pixel import PixelScorer  # noqa: E402

ELEMENTWISE_FLOPS_PER_PIXEL = 80  # ~25 array ops per channel on the filtered moments, + the mask


def make_data(
    n: int, size: int, seed: int = 0, group_size: int = 1
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Photo-like edits: smooth colour fields + texture, a repainted box, +-3 jitter elsewhere; each
    group of `group_size` consecutive edits shares one source and box (the same arrays)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % group_size == 0:
            field = ndimage.gaussian_filter(rng.random((size // 8, size // 8, 3)), sigma=(2, 2, 0))
            field = np.kron(field, np.ones((8, 8, 1)))
            field = (field - field.min()) / (np.ptp(field) + 1e-9)
            source = np.clip(field * 220 + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
            mask = np.zeros((size, size), bool)
            y0, x0, h, w = rng.integers(0, size // 2, 4)
            mask[y0 : y0 + h + 8, x0 : x0 + w + 8] = True
        edited = np.clip(source.astype(np.int16) + rng.integers(-3, 4, source.shape), 0, 255).astype(np.uint8)
        edited[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        out.append((source, edited, mask))
    return out


def wire(
    data: list[tuple[np.ndarray, np.ndarray, np.ndarray]], group_size: int
) -> tuple[list[reward_pb2.Edit], list[reward_pb2.Group]]:
    """The edits as (c) sends them: each with its own source and mask (group_size 1), or without them
    and one Group per group_size edits carrying them once (as rollout workers send them)."""
    if group_size == 1:
        return [make_edit(f"e{i}", f"g{i // 8}", 0, "x", s, e, m) for i, (s, e, m) in enumerate(data)], []
    edits = [
        reward_pb2.Edit(
            edit_id=f"e{i}",
            group_id=f"g{i // group_size}",
            instruction="x",
            edited_image=wire_image(e, "edited_image"),
        )
        for i, (_, e, _) in enumerate(data)
    ]
    groups = [
        reward_pb2.Group(
            group_id=f"g{i // group_size}", source_image=wire_image(s, "source_image"), edit_mask=wire_mask(m)
        )
        for i, (s, _, m) in enumerate(data)
        if i % group_size == 0
    ]
    return edits, groups


def flops_per_edit(h: int, w: int, channels: int = 3, window: int = 11) -> tuple[float, float]:
    """(filter FLOPs, element-wise FLOPs) of one S_pix edit of h x w pixels."""
    planes = 5 * channels + 1  # x, y, x^2, y^2, xy per channel, and the keep mask
    return planes * 2 * window * 2 * h * w, ELEMENTWISE_FLOPS_PER_PIXEL * h * w


def filter_gflops(width: int, window: int = 11, sigma: float = 1.5) -> float:
    """Single-core GFLOP/s (per CPU second) of cv2.sepFilter2D on the float32 row bands the scorer
    filters, best of 5."""
    import cv2

    from cocoedit.rewards.metrics_cv import CV_BAND_PIXELS, CV_MIN_BAND_ROWS, gaussian_taps

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rows = max(CV_MIN_BAND_ROWS, CV_BAND_PIXELS // width) + window - 1
    g = gaussian_taps(window, sigma).reshape(window, 1)
    src = np.random.default_rng(0).random((rows, width), dtype=np.float32)
    dst = np.empty_like(src)
    reps = max(10, 2**24 // src.size)
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(reps):
            cv2.sepFilter2D(src, -1, g, g, dst=dst, borderType=cv2.BORDER_CONSTANT)
        best = min(best, (time.thread_time() - t0) / reps)
    cv2.setNumThreads(threads)
    return 2 * window * 2 * src.size / best / 1e9


def timed(fn, server_pid: int | None = None) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """(wall s, CPU s of this process, CPU s of the server process) of one fn() call."""
    import psutil

    server = psutil.Process(server_pid) if server_pid is not None else None

    def server_cpu() -> float:
        return sum(server.cpu_times()[:2]) if server is not None else 0.0

    t0, c0, s0 = time.perf_counter(), time.process_time(), server_cpu()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0, server_cpu() - s0


def start_server(threads: int) -> tuple[subprocess.Popen, int, object]:
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "cocoedit.cluster.cli", "serve", "pixel", f"rewards.pixel.threads={threads}"]
        + ["--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return server, port, log


def summary(name: str, values: list[float], target: float | None = None, below: bool = False) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    met = ""
    if target is not None:
        ok = hi <= target if below else lo >= target
        met = f"   target {'<=' if below else '>='} {target}: {'met in every round' if ok else 'NOT met'}"
    return f"{name:<42} min {lo:6.2f}  median {mid:6.2f}  max {hi:6.2f}{met}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3, help="rounds of (a), (b), (c)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="scoring threads (PixelConfig.threads)"
    )
    parser.add_argument(
        "--group-size",
        type=int,
        nargs="+",
        default=[1],
        help="(c) sends groups of G edits sharing a source and mask; several values: each in every round",
    )
    args = parser.parse_args()
    if min(args.group_size) < 1:
        parser.error(f"--group-size {args.group_size}: every G must be >= 1 (1 = each edit its own source)")
    apply_loopback_env()
    n, size, sizes = args.edits, args.size, args.group_size
    cores = min(args.threads, os.cpu_count() or 1)
    print(
        f"{n} edits of {size}x{size}, {args.threads} scoring threads, {os.cpu_count()} CPUs, groups of {sizes}"
    )
    scorer = PixelScorer(PixelConfig(threads=args.threads))
    scorer.start_threads()  # as the service does on load()

    data, sent, alone, t_encode = {}, {}, {}, {}
    for g in sizes:
        data[g] = make_data(n, size, group_size=g)
        t0 = time.perf_counter()
        sent[g] = wire(data[g], g)
        t_encode[g] = time.perf_counter() - t0
        alone[g] = expand_groups(reward_pb2.ScoreRequest(edits=sent[g][0], groups=sent[g][1]))
    decoded = [
        DecodedEdit(f"e{i}", "g", 0, "x", s, e, m.astype(np.float32))
        for i, (s, e, m) in enumerate(data[sizes[0]])
    ]
    scorer.score_sync(decoded[:4])

    def decode_alone(g: int) -> None:
        for edit in alone[g]:  # each decoded edit dropped at once, in both
            decode_edit(edit, scorer)

    def decode_shared(g: int) -> Callable[[], None]:
        """The server's decoding of the request (planned here, untimed), as a call to time."""
        edits = RequestEdits(reward_pb2.ScoreRequest(edits=sent[g][0], groups=sent[g][1]), scorer)
        errors, chunks = edits.plan(2**20, 64)
        assert not errors, errors

        def run() -> None:
            for i in (i for chunk in chunks for i in chunk):
                edits.decode(i)

        return run

    server, port, log = start_server(args.threads)
    sk_n = max(4, n // 4)  # the reference is slow: time a quarter of the batch and scale
    rounds: list[dict[int, tuple[float, ...]]] = []
    try:
        client = RewardClient([f"127.0.0.1:{port}"], ClientConfig(timeout_s=600, batch_edits=n), "pixel")
        try:
            client.wait_ready(120)
        except TimeoutError:
            log.seek(0)
            print(f"server log:\n{log.read()}", file=sys.stderr)
            raise
        client.score(alone[sizes[0]][:4])
        ms = lambda cpu_s: 1000 * cpu_s / n  # noqa: E731
        data0 = data[sizes[0]]
        for r in range(args.runs):
            t_a, cpu_a, _ = timed(lambda: [masked_psnr_ssim_reference(e, s, m) for s, e, m in data0[:sk_n]])
            t_a, cpu_a = t_a * n / sk_n, cpu_a * n / sk_n
            t_b, cpu_b, _ = timed(lambda: scorer.score_sync(decoded))
            rounds.append({})
            for g in sizes:
                t_c, client_c, server_c = timed(lambda g=g: client.score(*sent[g]), server.pid)
                _, cpu_d, _ = timed(lambda g=g: decode_alone(g))
                _, cpu_ds, _ = timed(decode_shared(g))
                rounds[-1][g] = (t_a, cpu_a, t_b, cpu_b, t_c, client_c, server_c, cpu_d, cpu_ds)
                print(
                    f"round {r + 1} G={g:<2}: edits/s (a) {n / t_a:6.1f}  (b) {n / t_b:6.1f}  (c) {n / t_c:6.1f}   "
                    f"CPU ms/edit (a) {ms(cpu_a):5.1f}  (b) {ms(cpu_b):5.1f}  (c) server {ms(server_c):5.1f} + "
                    f"client {ms(client_c):4.1f}  (d) {ms(cpu_d):4.1f}  (d shared) {ms(cpu_ds):4.1f}"
                )
        client.close()
    finally:
        server.terminate()
        server.wait(30)
    gflops = filter_gflops(size)

    for g in sizes:
        mb = sum(m.ByteSize() for m in [*sent[g][0], *sent[g][1]]) / 2**20
        print(
            f"(c) G={g} sends {mb:.1f} MB of PNG per {n} edits; encoding them: {n / t_encode[g]:.1f} edits/s"
        )
    for g in sizes:
        rs = [r[g] for r in rounds]
        print(f"\nratios over the rounds, G={g}:")
        a_, b_, c_ = (lambda r: r[0]), (lambda r: r[2]), (lambda r: r[4])
        print(summary("b/a  edits/s, in process / scikit-image", [a_(r) / b_(r) for r in rs], 5.0))
        print(summary("c/a  edits/s, gRPC / scikit-image", [a_(r) / c_(r) for r in rs], 4.0))
        print(summary("a/b  CPU per edit, scikit-image / ours", [r[1] / r[3] for r in rs]))
        print(summary("c/b  CPU per edit, server / in process", [r[6] / r[3] for r in rs], 1.2, below=True))
        print(summary("     the same + the client's CPU", [(r[5] + r[6]) / r[3] for r in rs]))
        print(summary("     (b + d) / b: decoding alone", [(r[3] + r[7]) / r[3] for r in rs]))
        print(summary("d/ds CPU, decoded per edit / per group", [r[7] / r[8] for r in rs]))
    for g in sizes[1:]:
        g0 = sizes[0]
        print(f"\nG={g} against G={g0}, over the rounds:")
        print(summary(f"server CPU per edit, G={g0} / G={g}", [r[g0][6] / r[g][6] for r in rounds]))
        print(summary(f"edits/s (c), G={g} / G={g0}", [r[g0][4] / r[g][4] for r in rounds]))
        print(summary(f"(d shared) CPU per edit, G={g0} / G={g}", [r[g0][8] / r[g][8] for r in rounds]))
    filt, elementwise = flops_per_edit(size, size)
    roof_ms = 1000 * (filt + elementwise) / (gflops * 1e9)
    best_b = min(1000 * r[sizes[0]][3] / n for r in rounds)
    best_c = {g: min(1000 * r[g][6] / n for r in rounds) for g in sizes}
    print(
        f"\nroofline: {filt / 1e6:.0f} MFLOP filter + {elementwise / 1e6:.0f} MFLOP element-wise per edit; "
        f"sepFilter2D {gflops:.1f} GFLOP/s per core -> {roof_ms:.1f} CPU ms per edit "
        f"({cores * 1000 / roof_ms:.0f} edits/s on {cores} cores)"
    )
    reached = "  ".join(f"G={g} {roof_ms / best_c[g]:.0%}" for g in sizes)
    print(f"reached (best round): (b) {roof_ms / best_b:.0%} at {best_b:.1f} ms, (c) server {reached}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
