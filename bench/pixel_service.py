"""Throughput of the pixel reward: scikit-image vs torch in process vs the gRPC service on loopback.

    .venv/bin/python bench/pixel_service.py [--edits 64] [--size 512] [--repeats 3] [--threads 2]

Prints edits/s of
  (a) the keep-only reference with scikit-image, one edit at a time, in process;
  (b) the torch pixel reward S_pix in process (PixelScorer.score_sync on decoded edits), and the
      keep-only torch convention for comparison with (a);
  (c) RewardClient.score through a `cocoedit serve pixel` subprocess on 127.0.0.1 (PNG decoding,
      validation and the wire included; encoding the PNGs is timed separately),
and the ratios b/a and c/b. Best of --repeats, so other load on the machine counts less.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoedit.loopback import apply_loopback_env, free_port  # noqa: E402
from cocoedit.rewards.base import DecodedEdit  # noqa: E402
from cocoedit.rewards.client import RewardClient, make_edit  # noqa: E402
from cocoedit.rewards.config import ClientConfig, PixelConfig  # noqa: E402
from cocoedit.rewards.metrics import masked_psnr_ssim, masked_psnr_ssim_reference, uint8_to_unit  # noqa: E402
from cocoedit.rewards.pixel import PixelScorer  # noqa: E402


def make_data(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Photo-like edits: smooth colour fields + texture, a repainted box, +-3 jitter elsewhere."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
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


def best_of(repeats: int, fn, server_pid: int | None = None) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall s, CPU s of this process + the server's) of the fastest of `repeats` runs of fn()."""
    import psutil

    server = psutil.Process(server_pid) if server_pid is not None else None

    def cpu() -> float:
        extra = sum(server.cpu_times()[:2]) if server is not None else 0.0
        return time.process_time() + extra

    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu()
        fn()
        runs.append((time.perf_counter() - t0, cpu() - c0))
    return min(runs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="scoring threads (PixelConfig.threads)"
    )
    args = parser.parse_args()
    apply_loopback_env()
    n = args.edits
    data = make_data(n, args.size)
    print(f"{n} edits of {args.size}x{args.size}, {args.threads} scoring threads, {os.cpu_count()} CPUs")

    sk_n = max(4, n // 4)  # the reference is slow: time a quarter of the batch and scale
    t_a, cpu_a = best_of(
        args.repeats, lambda: [masked_psnr_ssim_reference(e, s, m) for s, e, m in data[:sk_n]]
    )
    t_a, cpu_a = t_a * n / sk_n, cpu_a * n / sk_n

    decoded = [
        DecodedEdit(f"e{i}", "g", 0, "x", s, e, m.astype(np.float32)) for i, (s, e, m) in enumerate(data)
    ]
    scorer = PixelScorer(PixelConfig(threads=args.threads))
    scorer.start_threads()  # as the service does on load(): torch single-threaded, chunks in parallel
    scorer.score_sync(decoded[:4])
    t_b, cpu_b = best_of(args.repeats, lambda: scorer.score_sync(decoded))

    def torch_keep_only() -> None:
        for i in range(0, n, 8):
            part = data[i : i + 8]
            e = uint8_to_unit(torch.from_numpy(np.stack([p[1] for p in part])))
            s = uint8_to_unit(torch.from_numpy(np.stack([p[0] for p in part])))
            m = torch.from_numpy(np.stack([p[2] for p in part])).float()[:, None]
            masked_psnr_ssim(e, s, m, "keep-only")

    t_b_keep, cpu_b_keep = best_of(args.repeats, torch_keep_only)

    t0 = time.perf_counter()
    edits = [make_edit(f"e{i}", f"g{i // 8}", 0, "x", s, e, m) for i, (s, e, m) in enumerate(data)]
    t_encode = time.perf_counter() - t0
    mb = sum(e.ByteSize() for e in edits) / 2**20

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "serve",
            "pixel",
            f"rewards.pixel.threads={args.threads}",  # before --port: argparse takes no positionals after it
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = RewardClient([f"127.0.0.1:{port}"], ClientConfig(timeout_s=600, batch_edits=16), "pixel")
        try:
            client.wait_ready(120)
        except TimeoutError:
            log.seek(0)
            print(f"server log:\n{log.read()}", file=sys.stderr)
            raise
        client.score(edits[:2])
        t_c, cpu_c = best_of(args.repeats, lambda: client.score(edits), server.pid)
        client.close()
    finally:
        server.terminate()
        server.wait(30)

    a, b, b_keep, c = n / t_a, n / t_b, n / t_b_keep, n / t_c
    ms = lambda cpu_s: 1000 * cpu_s / n  # noqa: E731
    print("                                          edits/s   CPU ms/edit (all threads, + server for c)")
    print(f"(a) scikit-image keep-only, in process : {a:8.1f}   {ms(cpu_a):8.1f}")
    print(f"(b) torch S_pix, in process             : {b:8.1f}   {ms(cpu_b):8.1f}")
    print(f"    torch keep-only, in process         : {b_keep:8.1f}   {ms(cpu_b_keep):8.1f}")
    print(
        f"(c) gRPC service on loopback            : {c:8.1f}   {ms(cpu_c):8.1f}   ({mb:.1f} MB of PNG per batch)"
    )
    print(f"    PNG encoding on the client          : {n / t_encode:8.1f}   (not in c)")
    print(f"b/a = {b / a:.2f} wall, {cpu_a / cpu_b:.2f} CPU   (torch keep-only / a = {b_keep / a:.2f} wall)")
    print(
        f"c/b = {c / b:.2f} wall, {cpu_b / cpu_c:.2f} CPU   (service wall time / in-process = {b / c:.2f}x)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
