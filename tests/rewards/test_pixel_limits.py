"""The pixel service's limits: PNG headers read before decoding, per-edit budgets, bounded chunks, bombs,
shutdown under load (real gRPC on 127.0.0.1, real `cocoedit serve` processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest

from cocoedit.protos import reward_pb2
from cocoedit.rewards.client import RewardClient
from cocoedit.rewards.config import ClientConfig, PixelConfig
from cocoedit.rewards.images import ImageDecodeError, decode_png
from cocoedit.rewards.pixel import PixelScorer
from cocoedit.rewards.server import SERVICE_NAME
from tests.rewards.conftest import expected_scores, make_edits, stub

ROOT = Path(__file__).resolve().parents[2]


def png_header_only(width: int, height: int, color_type: int = 2, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR declares width x height but whose pixel data is a few bytes (a bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_16_bit_pngs_are_refused_grey_and_rgb_alike() -> None:
    import cv2

    for image in (np.full((4, 5, 3), 1000, np.uint16), np.full((4, 5), 1000, np.uint16)):  # RGB was cut
        data = cv2.imencode(".png", image)[1].tobytes()
        with pytest.raises(ImageDecodeError, match="16-bit samples are not accepted; send 8-bit grey or RGB"):
            decode_png(data)


def test_png_size_is_checked_from_the_header_before_decoding() -> None:
    from cocoedit.rewards.images import read_png_header

    bomb = png_header_only(13000, 13000)
    header = read_png_header(bomb)
    assert (header.width, header.height, header.channels, header.decoded_bytes) == (
        13000,
        13000,
        3,
        507_000_000,
    )
    with pytest.raises(
        ImageDecodeError, match=r"13000x13000 \(WxH\) = 169000000 pixels is over the limit of 4096x4096"
    ):
        decode_png(bomb, max_pixels=4096 * 4096)
    with pytest.raises(ImageDecodeError, match="no IHDR"):
        decode_png(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_over_limit_images_and_budget_are_per_edit_errors(serve, fast_client_cfg) -> None:
    # a 200x200 edit with a mask decodes to 200 * 200 * (3 + 3 + 1 + 4) = 440000 bytes: 2 fit in 1 MiB
    srv = serve(PixelScorer(PixelConfig(threads=1)), max_image_pixels=256 * 256, max_request_decoded_mb=1)
    edits = make_edits(3, 200, 200, seed=20)
    big = make_edits(1, 300, 260, seed=21, prefix="big")[0]
    bomb = reward_pb2.Edit()
    bomb.CopyFrom(edits[0])
    bomb.edit_id, bomb.edited_image = "bomb", png_header_only(13000, 13000)
    client = RewardClient([srv.address], fast_client_cfg, "pixel")
    out = {o.edit_id: o for o in client.score([edits[0], big, bomb, edits[1], edits[2]])}
    assert out["e0"].error is None and out["e1"].error is None
    assert out["big0"].error == (
        "source_image: 260x300 (WxH) = 78000 pixels is over the limit of 256x256 = 65536 pixels per image; "
        "send smaller images"
    )
    assert "edited_image: 13000x13000 (WxH) = 169000000 pixels is over the limit" in out["bomb"].error
    assert out["e2"].error == (
        "request over its decoded-bytes budget: this edit decodes to 0.4 MB and the edits before it to 0.8 MB, "
        "over max_request_decoded_mb=1; send it in another request (fewer edits per request)"
    )
    assert out["e1"].score == pytest.approx(expected_scores(edits[1:2])["score"].item(), abs=1e-6)


class ChunkRecorder(PixelScorer):
    """The pixel scorer, recording per call how many edits it got and how many decoded images (of all
    calls so far) were still alive: the server frees a chunk's pixels before the next one is scored."""

    def __init__(self) -> None:
        super().__init__(PixelConfig(threads=1))
        self.calls: list[tuple[int, int]] = []
        self._seen: list[weakref.ref] = []

    async def score(self, edits: list) -> list:
        self._seen += [weakref.ref(e.source_image) for e in edits]
        self.calls.append((len(edits), sum(ref() is not None for ref in self._seen)))
        return await super().score(edits)


def test_requests_are_decoded_and_scored_in_bounded_chunks(serve, fast_client_cfg) -> None:
    scorer = ChunkRecorder()
    srv = serve(scorer, chunk_decoded_mb=1)  # 200x200 edits decode to 440000 bytes: 2 per chunk
    edits = make_edits(7, 200, 200, seed=22)
    bad = reward_pb2.Edit()
    bad.CopyFrom(edits[3])
    bad.edit_id, bad.edit_mask = "bad", b""
    out = RewardClient([srv.address], ClientConfig(batch_edits=64), "pixel").score([*edits, bad])
    assert scorer.calls == [(2, 2), (2, 2), (2, 2), (1, 1)]
    assert [o.edit_id for o in out] == [e.edit_id for e in edits] + ["bad"]
    assert "edit_mask: missing" in out[-1].error
    ref = expected_scores(edits)["score"]
    assert [o.score for o in out[:-1]] == pytest.approx(ref.tolist(), abs=1e-6)


def test_corrupt_request_bytes_are_invalid_argument(pixel_server) -> None:
    channel = grpc.insecure_channel(pixel_server.address)
    for method, message in (("Score", "ScoreRequest"), ("Info", "InfoRequest")):
        call = channel.unary_unary(f"/{SERVICE_NAME}/{method}")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff\xff\xff not a protobuf", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"are not a valid cocoedit.reward.v1.{message}" in err.value.details()
    channel.close()


def test_stop_event_and_batched_torch_path(monkeypatch) -> None:
    import threading

    from cocoedit.rewards.edits import decode_edit
    from cocoedit.rewards.metrics_cv import ScoringStopped

    scorer = PixelScorer(PixelConfig(threads=1))
    decoded = [
        decode_edit(e, scorer) for e in make_edits(5, 40, 36, seed=23) + make_edits(2, 24, 24, seed=24)
    ]
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScoringStopped):
        scorer.score_sync(decoded, stop)
    # the GPU path (torch, batched by size) on CPU: the same numbers as the OpenCV path
    import cocoedit.rewards.pixel

    monkeypatch.setattr(cocoedit.rewards.pixel, "CHUNK_PIXELS", 2 * 40 * 36)
    batched = scorer._score_batched(decoded, None)
    for a, b in zip(scorer.score_sync(decoded), batched, strict=True):
        assert a.edit_id == b.edit_id and a.score == pytest.approx(b.score, abs=1e-6)
        assert a.components == pytest.approx(b.components, rel=1e-5, abs=1e-6)


def serve_pixel_process(*overrides: str) -> tuple[subprocess.Popen, int]:
    """A `cocoedit serve pixel` subprocess on a free port, SERVING (its output is in proc.stdout)."""
    from cocoedit.loopback import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cocoedit.cluster.cli", "serve", "pixel", *overrides, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    RewardClient([f"127.0.0.1:{port}"], ClientConfig(), "pixel").wait_ready(timeout_s=120)
    return proc, port


def vm_kb(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in kB (VmRSS now, VmHWM the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_bomb_images_leave_the_service_rss_flat() -> None:
    from bench.pixel_memory import zero_png

    proc, port = serve_pixel_process()
    try:
        client = RewardClient([f"127.0.0.1:{port}"], ClientConfig(timeout_s=60, retries=0), "pixel")
        assert client.score(make_edits(2, 64, 64))[0].error is None  # warm: first decode and score
        idle_peak = vm_kb(proc.pid, "VmHWM")
        bombs = []
        for side in (6000, 4097):
            image, mask = zero_png(side, side), zero_png(side, side, channels=1)
            assert len(image) < 500_000  # up to 108 MB of pixels in a few hundred KB
            bombs.append(
                reward_pb2.Edit(edit_id=f"bomb{side}", source_image=image, edited_image=image, edit_mask=mask)
            )
        out = client.score(bombs)
        peak = vm_kb(proc.pid, "VmHWM")
    finally:
        proc.kill()
        proc.wait()
    assert "source_image: 6000x6000 (WxH) = 36000000 pixels is over the limit of 4096x4096" in out[0].error
    assert "source_image: 4097x4097 (WxH)" in out[1].error
    assert peak - idle_peak < 50_000, (idle_peak, peak)  # kB: nothing of the 108 MB images was decoded


def test_sigterm_with_a_long_request_in_flight_exits_within_grace() -> None:
    import cv2
    import psutil

    proc, port = serve_pixel_process("rewards.pixel.server.grace_s=1")
    try:
        # 150 edits of 1024 px: seconds of scoring; smooth images, so the request is small
        yy, xx = np.mgrid[:1024, :1024]
        source = np.dstack([xx // 4, yy // 4, (xx + yy) // 8]).astype(np.uint8)
        edited = source.copy()
        edited[100:300, 100:300] = 0
        mask = np.zeros((1024, 1024), np.uint8)
        mask[100:300, 100:300] = 255
        png = lambda a: cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()  # noqa: E731
        parts = dict(source_image=png(source), edited_image=png(edited), edit_mask=png(mask))
        request = reward_pb2.ScoreRequest(
            edits=[reward_pb2.Edit(edit_id=f"e{i}", **parts) for i in range(150)]
        )
        server = psutil.Process(proc.pid)
        cpu0 = sum(server.cpu_times()[:2])
        call = stub(f"127.0.0.1:{port}").Score.future(request, timeout=120)
        deadline = time.monotonic() + 60
        while sum(server.cpu_times()[:2]) - cpu0 < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until it is well into decoding and scoring
        assert not call.done()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stdout.read()
    assert elapsed < 1.0 + 1.0, f"exited {elapsed:.1f} s after SIGTERM; grace is 1 s"
    with pytest.raises(grpc.RpcError) as err:
        call.result()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


@pytest.mark.gpu
def test_cuda_pixel_service_scores_like_the_cpu_one(serve, fast_client_cfg) -> None:
    edits = make_edits(9, 64, 48, seed=25) + make_edits(3, 32, 32, seed=26, prefix="s")
    cpu = RewardClient([serve(PixelScorer(PixelConfig(threads=2))).address], fast_client_cfg, "pixel")
    gpu = RewardClient([serve(PixelScorer(PixelConfig(device="cuda"))).address], fast_client_cfg, "pixel")
    for a, b in zip(cpu.score(edits), gpu.score(edits), strict=True):
        assert a.error is None and b.error is None
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.components == pytest.approx(b.components, rel=1e-5, abs=1e-5)
    assert gpu.info().settings["backend"] == "torch, batched"
