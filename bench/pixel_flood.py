"""Memory of the pixel service under a flood: N concurrent requests of the maximum message size.

    .venv/bin/python bench/pixel_flood.py [--requests 12] [--message-mb 200] [--concurrent 8] [--server-root PATH]

Starts `cocoedit serve pixel` with `max_message_mb` = --message-mb and `max_concurrent_calls` =
--concurrent, then sends --requests Score calls at once, each one edit whose source image is
(--message-mb - 1) MB of bytes that are not a PNG (the server answers a per-edit error from the header,
so the numbers are the transport's and the parser's, not the scorer's). Prints, from the server's
/proc/<pid>/status (MB): RSS when idle, the peak (VmHWM) during the flood, RSS 1 s after the last answer,
how many calls were served and how many refused (RESOURCE_EXHAUSTED), and the bound the design states:
idle + max_concurrent_calls x 3 x message (gRPC's buffer, the bytes handed to the parser, the parsed
message) + 64 MB. --server-root runs the server from another checkout (e.g. a git worktree of an older
commit) with the same client, for before/after numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pixel_memory import vm_mb  # noqa: E402
from cocoedit.loopback import apply_loopback_env, free_port  # noqa: E402
from cocoedit.protos import reward_pb2  # noqa: E402
from cocoedit.rewards.client import RewardClient  # noqa: E402
from cocoedit.rewards.config import ClientConfig  # noqa: E402
from cocoedit.rewards.server import grpc_message_options  # noqa: E402


def start_server(root: Path, message_mb: int, concurrent: int) -> tuple[subprocess.Popen, int]:
    """`cocoedit serve pixel` from checkout `root` on a free port, SERVING."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "cocoedit.cluster.cli", "serve", "pixel"]
        + [f"rewards.pixel.server.max_message_mb={message_mb}"]
        + [f"rewards.pixel.server.max_concurrent_calls={concurrent}", "--port", str(port)],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        RewardClient([f"127.0.0.1:{port}"], ClientConfig(), "pixel").wait_ready(300)
    except TimeoutError:
        log.seek(0)
        print(f"server log:\n{log.read()}", file=sys.stderr)
        server.kill()
        raise
    return server, port


def flood(port: int, requests: int, message_mb: int) -> tuple[int, int, list[str]]:
    """Send `requests` maximum-size Score calls at once; (served, refused, other errors)."""
    payload = reward_pb2.ScoreRequest(
        edits=[reward_pb2.Edit(edit_id="big", source_image=bytes((message_mb - 1) * 2**20))]
    ).SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_message_options(message_mb + 1))
    # raw bytes: the client serializes nothing per call
    score = channel.unary_unary("/cocoedit.reward.v1.RewardService/Score")
    served, refused, other = [0], [0], []
    lock = threading.Lock()
    start = threading.Barrier(requests)

    def one() -> None:
        start.wait()
        try:
            score(payload, timeout=600)
            with lock:
                served[0] += 1
        except grpc.RpcError as e:
            with lock:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused[0] += 1
                else:
                    other.append(f"{e.code().name}: {e.details()}")

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    return served[0], refused[0], other


def measure(root: Path, requests: int, message_mb: int, concurrent: int) -> dict[str, float]:
    """Idle RSS, peak and RSS after a flood of a server from `root` (MB), and the calls' outcomes."""
    server, port = start_server(root, message_mb, concurrent)
    try:
        client = RewardClient([f"127.0.0.1:{port}"], ClientConfig(timeout_s=60, retries=0), "pixel")
        client.score([reward_pb2.Edit(edit_id="warm", source_image=b"x")])  # a first (per-edit error) call
        client.close()
        idle = vm_mb(server.pid)
        t0 = time.perf_counter()
        served, refused, other = flood(port, requests, message_mb)
        elapsed = time.perf_counter() - t0
        time.sleep(1.0)
        after = vm_mb(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    return {
        "idle": idle["VmRSS"],
        "peak": after["VmHWM"],
        "after": after["VmRSS"],
        "served": served,
        "refused": refused,
        "other": len(other),
        "elapsed_s": elapsed,
        "bound": idle["VmRSS"]
        + concurrent * 3 * message_mb
        + 128,  # 128 MB: allocator arenas and gRPC buffers (539 MB peak seen against a 64 MB slack)
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--message-mb", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=8, help="the server's max_concurrent_calls")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout the server runs from")
    args = parser.parse_args()
    apply_loopback_env()
    m = measure(args.server_root, args.requests, args.message_mb, args.concurrent)
    print(
        f"server from {args.server_root}: {args.requests} concurrent requests of {args.message_mb} MB, "
        f"max_concurrent_calls={args.concurrent}: idle RSS {m['idle']:.0f} MB, peak {m['peak']:.0f} MB, "
        f"RSS 1 s after {m['after']:.0f} MB; {m['served']} served, {m['refused']} refused "
        f"(RESOURCE_EXHAUSTED), {m['other']} other errors, {m['elapsed_s']:.1f} s; design bound "
        f"idle + {args.concurrent} x 3 x {args.message_mb} MB + 128 MB = {m['bound']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
