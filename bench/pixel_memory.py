"""Memory of the pixel service: bomb images, and one request of 512 edits at 512 px.

    .venv/bin/python bench/pixel_memory.py [--edits 512] [--size 512] [--bombs 13000 6000] [--server-root PATH]

Starts `cocoedit serve pixel` (message limits raised to 1024 MB on both ends so that the big request
fits) and reads its /proc/<pid>/status: VmRSS (now) and VmHWM (the peak so far), in MB:
  1. idle, after a warm-up request of 2 small edits;
  2. after one request carrying the bomb images: RGB PNGs of --bombs (default 13000x13000 and
     6000x6000) zeros (a few hundred KB each, 507 MB and 108 MB of pixels), each as the source and
     edited image of an edit (with a grey mask of zeros);
  3. after one request of --edits edits of --size px (16 distinct edits, repeated): the peak, against
     the bound the design sets: idle + 3 x the request's bytes (gRPC's buffer, the bytes handed to the
     parser, the parsed message) + 2 chunks of decoded images (chunk_decoded_mb) + the scoring
     threads' row bands. The images are smooth and sent zlib-compressed, so that the request's own
     bytes (bounded separately, by max_message_mb) stay small and the peak shows the decoding; they
     decode to as many bytes as any image of that size.
--server-root runs the server from another checkout (e.g. a git worktree of an older commit) with the
same client, for before/after numbers.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoedit.loopback import apply_loopback_env, free_port  # noqa: E402
from cocoedit.protos import reward_pb2  # noqa: E402
from cocoedit.rewards.client import RewardClient  # noqa: E402
from cocoedit.rewards.config import ClientConfig, ServerConfig  # noqa: E402
from cocoedit.rewards.images import encode_png  # noqa: E402

MESSAGE_MB = 1024


def zero_png(width: int, height: int, channels: int = 3) -> bytes:
    """A valid 8-bit PNG of zeros (grey or RGB), compressed as it is streamed: a decompression bomb of
    width x height x channels bytes in ~1/1000 of that."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = {1: 0, 3: 2}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    deflate = zlib.compressobj(9)
    rows = bytes(1 + width * channels) * 64  # filter byte 0 + a row of zeros, 64 rows at a time
    parts = [deflate.compress(rows) for _ in range(height // 64)]
    parts += [deflate.compress(rows[: (height % 64) * (1 + width * channels)]), deflate.flush()]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def smooth_edits(n: int, size: int, seed: int = 0) -> list[reward_pb2.Edit]:
    """Edits of smooth colour gradients with a repainted box (1-bit-ish masks), PNGs at zlib level 6."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    edits = []
    for i in range(n):
        a, b, c = rng.random(3)
        source = (np.dstack([a * xx + (1 - a) * yy, b * yy, c * (xx + yy) / 2]) * 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y0, x0 = rng.integers(0, size // 2, 2)
        mask[y0 : y0 + size // 4, x0 : x0 + size // 4] = 255
        edited = source.copy()
        edited[mask > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
        png = lambda image: encode_png(image, compress_level=6)  # noqa: E731
        edits.append(
            reward_pb2.Edit(
                edit_id=f"d{i}", source_image=png(source), edited_image=png(edited), edit_mask=png(mask)
            )
        )
    return edits


def vm_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) / 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=512)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--bombs", type=int, nargs="*", default=[13000, 6000], help="sides of the bomb images"
    )
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout the server runs from")
    args = parser.parse_args()
    apply_loopback_env()

    t0 = time.perf_counter()
    bombs = []
    for side in args.bombs:
        png = zero_png(side, side)
        mask = zero_png(side, side, channels=1)
        bombs.append(
            reward_pb2.Edit(edit_id=f"bomb{side}", source_image=png, edited_image=png, edit_mask=mask)
        )
    print(
        "bomb PNGs: "
        + ", ".join(f"{b.edit_id[4:]} px {len(b.source_image) / 1024:.0f} KB" for b in bombs)
        + f" (built in {time.perf_counter() - t0:.1f} s)"
    )
    distinct = smooth_edits(16, args.size)
    edits = []
    for i in range(args.edits):
        edit = reward_pb2.Edit()
        edit.CopyFrom(distinct[i % len(distinct)])
        edit.edit_id = f"e{i}"
        edits.append(edit)
    request_mb = sum(e.ByteSize() for e in edits) / 2**20

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "cocoedit.cluster.cli", "serve", "pixel"]
        + [f"rewards.pixel.server.max_message_mb={MESSAGE_MB}", "--port", str(port)],
        cwd=args.server_root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        cfg = ClientConfig(
            timeout_s=1800, retries=0, batch_edits=max(1, args.edits), max_message_mb=MESSAGE_MB
        )
        client = RewardClient([f"127.0.0.1:{port}"], cfg, "pixel")
        try:
            client.wait_ready(300)
        except TimeoutError:
            log.seek(0)
            print(f"server log:\n{log.read()}", file=sys.stderr)
            raise
        client.score(distinct[:2])
        idle = vm_mb(server.pid)
        print(
            f"server from {args.server_root}: idle RSS {idle['VmRSS']:.0f} MB, peak so far {idle['VmHWM']:.0f} MB"
        )

        t0 = time.perf_counter()
        out = client.score(bombs)  # none: skipped (a peak left by an older server would hide step 3's)
        after = vm_mb(server.pid)
        print(
            f"bomb request ({time.perf_counter() - t0:.1f} s): RSS {after['VmRSS']:.0f} MB "
            f"({after['VmRSS'] - idle['VmRSS']:+.0f} vs idle), peak {after['VmHWM']:.0f} MB "
            f"({after['VmHWM'] - idle['VmHWM']:+.0f} vs idle)"
        )
        for o in out:
            print(f"  {o.edit_id}: {o.error if o.error else f'score {o.score:.3f}'}")

        if not edits:
            return 0
        t0 = time.perf_counter()
        out = client.score(edits)
        big = vm_mb(server.pid)
        errors = sum(o.error is not None for o in out)
        chunk_mb = ServerConfig().chunk_decoded_mb
        bound = idle["VmRSS"] + 3 * request_mb + 2 * chunk_mb + 16
        print(
            f"{args.edits} edits of {args.size} px, {request_mb:.0f} MB request ({time.perf_counter() - t0:.1f} s, "
            f"{errors} per-edit errors): peak RSS {big['VmHWM']:.0f} MB ({big['VmHWM'] - idle['VmRSS']:+.0f} vs "
            f"idle); design bound idle + 3 x request + 2 x {chunk_mb} MB chunks + 16 MB = {bound:.0f} MB"
        )
        client.close()
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
