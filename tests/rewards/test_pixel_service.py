"""The pixel service and the shared server: real gRPC on 127.0.0.1, real scorers, every bad input."""

from __future__ import annotations

import asyncio
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
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.client import RewardClient, make_edit
from cocoedit.rewards.config import ClientConfig, PixelConfig
from cocoedit.rewards.images import ImageDecodeError, decode_png, encode_png
from cocoedit.rewards.metrics import pixel_reward
from cocoedit.rewards.pixel import PixelScorer
from cocoedit.rewards.server import SERVICE_NAME, grpc_message_options
from tests.rewards.conftest import GateScorer, TargetScorer, make_edits, synthetic_edit_arrays

ROOT = Path(__file__).resolve().parents[2]


def stub(address: str) -> reward_pb2_grpc.RewardServiceStub:
    return reward_pb2_grpc.RewardServiceStub(grpc.insecure_channel(address, options=grpc_message_options(64)))


def expected_scores(edits: list[reward_pb2.Edit], compat: str = "standard") -> dict[str, torch.Tensor]:
    """The in-process reward of the same edits (decoded from the same PNGs)."""
    unit = lambda b: torch.from_numpy(decode_png(b)).permute(2, 0, 1).float() / 255  # noqa: E731
    edited = torch.stack([unit(e.edited_image) for e in edits])
    source = torch.stack([unit(e.source_image) for e in edits])
    mask = torch.stack([torch.from_numpy(decode_png(e.edit_mask) >= 128).float()[None] for e in edits])
    return pixel_reward(edited, source, mask, compat=compat)


def test_png_roundtrip_is_exact_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)
    assert np.array_equal(decode_png(encode_png(grey)), grey)
    assert encode_png(rgb) == encode_png(rgb.copy())
    assert decode_png(encode_png(rgb[:, :, :1])).shape == (17, 23)


def test_decode_png_reads_every_8_bit_mode_as_pillow_does() -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    palette = Image.fromarray(rgb).convert("P")
    cases = {  # PNG written by Pillow -> the array Pillow reads back (palettes expanded)
        "L": (Image.fromarray(grey), {}, grey),
        "1": (Image.fromarray(grey > 127), {}, (grey > 127).astype(np.uint8) * 255),
        "RGB": (Image.fromarray(rgb), {}, rgb),
        "RGB+tRNS": (Image.fromarray(rgb), {"transparency": (1, 2, 3)}, rgb),
        "LA": (Image.fromarray(np.dstack([grey, grey]), "LA"), {}, np.dstack([grey, grey])),
        "RGBA": (Image.fromarray(np.dstack([rgb, grey])), {}, np.dstack([rgb, grey])),
        "P": (palette, {}, np.array(palette.convert("RGB"))),
        "P+tRNS": (palette, {"transparency": 0}, None),
    }
    for name, (image, options, expected) in cases.items():
        buf = io.BytesIO()
        image.save(buf, format="PNG", **options)
        decoded = decode_png(buf.getvalue())
        if expected is None:
            with Image.open(io.BytesIO(buf.getvalue())) as reread:
                expected = np.array(reread.convert("RGBA"))
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected), name


def test_png_errors_say_what_is_wrong() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_png(b"")
    with pytest.raises(ImageDecodeError, match="not a PNG"):
        decode_png(b"GIF89a....")
    data = encode_png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="undecodable"):
        decode_png(data[: len(data) // 2])
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint16) + 300).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="8-bit"):
        decode_png(buf.getvalue())
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="permute"):
        encode_png(np.zeros((3, 4, 4), np.uint8))


@pytest.mark.parametrize("compat", ["standard", "release"])
def test_service_scores_equal_in_process_reward(serve, fast_client_cfg, compat: str) -> None:
    srv = serve(PixelScorer(PixelConfig(compat=compat, threads=1)))
    edits = make_edits(12, 40, 36, seed=1)
    client = RewardClient([srv.address], fast_client_cfg, "pixel")
    outcomes = client.score(edits)
    ref = expected_scores(edits, compat)
    assert [o.edit_id for o in outcomes] == [e.edit_id for e in edits]
    for i, o in enumerate(outcomes):
        assert o.error is None
        assert o.score == pytest.approx(ref["score"][i].item(), abs=1e-6)
        for k in ("psnr", "ssim", "mse", "keep_fraction"):
            assert o.components[k] == pytest.approx(ref[k][i].item(), rel=1e-6, abs=1e-6)
    info = client.info()
    assert (info.service, info.score_name, info.settings["compat"]) == ("pixel", "pixel", compat)
    client.close()


def test_mixed_sizes_and_grey_images_in_one_request(pixel_server, fast_client_cfg) -> None:
    rng = np.random.default_rng(2)
    edits = []
    for i, (h, w) in enumerate([(16, 16), (24, 20), (16, 16)]):
        s, e, m = synthetic_edit_arrays(rng, h, w)
        edits.append(make_edit(f"m{i}", "g", 1, "x", s, e, m))
    s, e, m = synthetic_edit_arrays(rng, 16, 16)
    grey_s, grey_e = s[:, :, 0], e[:, :, 0]
    edits.append(
        make_edit("grey", "g", 1, "x", np.repeat(grey_s[..., None], 3, 2), grey_e[..., None].repeat(3, 2), m)
    )
    edits.append(
        reward_pb2.Edit(
            edit_id="grey-png",
            source_image=encode_png(grey_s),
            edited_image=encode_png(grey_e),
            edit_mask=encode_png(m.astype(np.uint8) * 255),
        )
    )
    out = RewardClient([pixel_server.address], fast_client_cfg, "pixel").score(edits)
    assert all(o.error is None for o in out), out
    assert out[3].score == pytest.approx(out[4].score, abs=1e-12)  # grey PNG == RGB with equal channels
    for i in range(3):
        assert out[i].score == pytest.approx(expected_scores(edits[i : i + 1])["score"].item(), abs=1e-6)


def test_whole_image_edit_scores_zero_with_a_warning(pixel_server, fast_client_cfg) -> None:
    s, e, _ = synthetic_edit_arrays(np.random.default_rng(3), 16, 16)
    out = RewardClient([pixel_server.address], fast_client_cfg, "pixel").score(
        [make_edit("all", "g", 0, "x", s, e, np.ones((16, 16), bool))]
    )[0]
    assert out.score == 0.0 and out.components == {"keep_fraction": 0.0}
    assert any("no keep region" in w for w in out.warnings)


def test_every_bad_edit_gets_a_per_edit_error_naming_the_field(pixel_server, fast_client_cfg) -> None:
    rng = np.random.default_rng(4)
    s, e, m = synthetic_edit_arrays(rng, 16, 16)
    good = make_edit("good", "g", 0, "x", s, e, m)
    mask_png = encode_png(m.astype(np.uint8) * 255)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.dstack([s, np.full((16, 16), 255, np.uint8)]), "RGBA").save(buf, format="PNG")
    rgba = buf.getvalue()
    soft = (m * 200 + 20).astype(np.uint8)  # 20 (keep) / 220 (edit): not binary
    cases = {
        "bad-source": (dict(source_image=b"not a png"), "source_image: not a PNG"),
        "bad-edited": (dict(edited_image=encode_png(s)[:40]), "edited_image: undecodable"),
        "no-edited": (dict(edited_image=b""), "edited_image: missing"),
        "size": (
            dict(edited_image=encode_png(e[:8])),
            "edited_image: 16x8 (WxH) does not match source_image 16x16",
        ),
        "rgba": (dict(source_image=rgba), "source_image: has 4 channels"),
        "mask-rgb": (
            dict(edit_mask=encode_png(np.dstack([m.astype(np.uint8) * 255] * 3))),
            "edit_mask: has 3 channels",
        ),
        "mask-size": (
            dict(edit_mask=encode_png(np.zeros((8, 16), np.uint8))),
            "edit_mask: 16x8 (WxH) does not match",
        ),
        "mask-bytes": (dict(edit_mask=b"\x89PNG\r\n\x1a\n garbage"), "edit_mask: undecodable"),
        "no-mask": (dict(edit_mask=b""), "edit_mask: missing, but the pixel service needs"),
    }
    edits = [good]
    for edit_id, (fields, _) in cases.items():
        edit = reward_pb2.Edit()
        edit.CopyFrom(good)
        edit.edit_id = edit_id
        for k, v in fields.items():
            setattr(edit, k, v)
        edits.append(edit)
    soft_edit = reward_pb2.Edit()
    soft_edit.CopyFrom(good)
    soft_edit.edit_id, soft_edit.edit_mask = "soft", encode_png(soft)
    edits.append(soft_edit)
    out = {o.edit_id: o for o in RewardClient([pixel_server.address], fast_client_cfg, "pixel").score(edits)}
    assert out["good"].error is None and out["good"].score is not None
    for edit_id, (_, message) in cases.items():
        assert out[edit_id].score is None
        assert message in out[edit_id].error, (edit_id, out[edit_id].error)
    assert out["soft"].score == pytest.approx(
        out["good"].score, abs=1e-12
    )  # binarised at 0.5 == the binary mask
    assert out["soft"].warnings == [
        "edit_mask was not binary (values other than 0 and 255); binarised at 0.5"
    ]
    assert decode_png(mask_png).max() == 255


def test_request_errors_are_invalid_argument(serve) -> None:
    srv = serve(PixelScorer(PixelConfig(threads=1)), max_batch_edits=4)
    s = stub(srv.address)
    edits = make_edits(5, 16, 16)
    for request, message in [
        (reward_pb2.ScoreRequest(), "empty ScoreRequest"),
        (reward_pb2.ScoreRequest(edits=edits), "5 edits in one request > max_batch_edits=4"),
        (reward_pb2.ScoreRequest(edits=[edits[0], edits[0]]), "duplicate edit_id 'e0'"),
        (reward_pb2.ScoreRequest(edits=[reward_pb2.Edit()]), "edit_id is empty"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            s.Score(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    assert len(s.Score(reward_pb2.ScoreRequest(edits=edits[:4]), timeout=10).scores) == 4


def test_target_instruction_nan_and_raising_scorer(serve, fast_client_cfg) -> None:
    srv = serve(TargetScorer())
    rng = np.random.default_rng(5)
    s, e, _ = synthetic_edit_arrays(rng, 12, 12)
    edits = [
        make_edit("ok", "g", 0, "do it", s, e, target_image=e),
        make_edit("no-target", "g", 0, "do it", s, e),
        make_edit("no-instruction", "g", 0, "  ", s, e, target_image=e),
        make_edit("target-size", "g", 0, "do it", s, e, target_image=e[:6]),
        make_edit("nan-score", "g", 0, "do it", s, e, target_image=s),
    ]
    client = RewardClient([srv.address], fast_client_cfg, "target")
    out = {o.edit_id: o for o in client.score(edits)}
    assert out["ok"].score == pytest.approx(1.0) and out["ok"].components == {"l1": 0.0}
    assert "target_image: missing" in out["no-target"].error
    assert "instruction: empty, but the target service needs" in out["no-instruction"].error
    assert "target_image: 12x6 (WxH) does not match" in out["target-size"].error
    assert out["nan-score"].score is None and "non-finite score (nan)" in out["nan-score"].error
    # a scorer that raises fails that call with INTERNAL; the server keeps serving
    with pytest.raises(grpc.RpcError) as err:
        stub(srv.address).Score(
            reward_pb2.ScoreRequest(edits=[make_edit("boom", "g", 0, "raise", s, e, target_image=e)]),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "target scorer raised RuntimeError: scorer blew up on purpose" in err.value.details()
    assert client.score(edits[:1])[0].score == pytest.approx(1.0)


def test_a_1024_pair_passes(pixel_server) -> None:
    rng = np.random.default_rng(6)
    s = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # incompressible: ~3 MB per PNG
    e = s.copy()
    e[:100] = 0
    m = np.zeros((1024, 1024), bool)
    m[:100] = True
    edit = make_edit("big", "g", 0, "x", s, e, m)
    assert edit.ByteSize() > 4 * 1024 * 1024  # above gRPC's default 4 MiB limit
    out = RewardClient([pixel_server.address], ClientConfig(timeout_s=60), "pixel").score([edit])[0]
    assert out.error is None and out.score == pytest.approx(1.0, abs=1e-6)


def test_overload_gets_resource_exhausted(serve) -> None:
    scorer = GateScorer()
    scorer.score_gate.clear()
    srv = serve(scorer, max_concurrent_calls=1)
    s = stub(srv.address)
    request = reward_pb2.ScoreRequest(edits=make_edits(1, 8, 8))
    first = s.Score.future(request, timeout=20)
    assert scorer.score_entered.wait(10)
    with pytest.raises(grpc.RpcError) as err:
        s.Score(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_calls=1" in err.value.details()
    scorer.score_gate.set()
    assert first.result().scores[0].scored.score == 0.5
    assert s.Score(request, timeout=10).scores[0].scored.score == 0.5  # capacity is back


def test_health_not_serving_until_loaded_and_reflection(serve) -> None:
    scorer = GateScorer(gate_load=True)
    srv = serve(scorer, wait_loaded=False)
    channel = grpc.insecure_channel(srv.address)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub(srv.address).Score(reward_pb2.ScoreRequest(edits=make_edits(1, 8, 8)), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in err.value.details()
    client = RewardClient([srv.address], ClientConfig(), "gate")
    with pytest.raises(
        TimeoutError, match="no replica of reward service 'gate' reported SERVING within 0.3 s"
    ):
        client.wait_ready(timeout_s=0.3)
    scorer.load_gate.set()
    assert client.wait_ready(timeout_s=10) == [srv.address]
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services


def test_sigterm_shuts_down_cocoedit_serve_gracefully(fast_client_cfg) -> None:
    from cocoedit.loopback import free_port

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cocoedit.cluster.cli", "serve", "pixel", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = RewardClient([f"127.0.0.1:{port}"], fast_client_cfg, "pixel")
        client.wait_ready(timeout_s=60)
        assert client.score(make_edits(2, 16, 16))[0].error is None
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert f"pixel reward service SERVING on 127.0.0.1:{port}" in output
    assert "shutting down" in output
    time.sleep(0.1)
    with pytest.raises(Exception, match="failed after 1 attempts"):
        RewardClient([f"127.0.0.1:{port}"], ClientConfig(retries=0, timeout_s=2), "pixel").score(
            make_edits(1, 8, 8)
        )


def test_parallel_edits_equal_sequential_scoring() -> None:
    import cv2

    from cocoedit.rewards.edits import decode_edit

    scorer = PixelScorer(PixelConfig(threads=2))
    decoded = [decode_edit(e, scorer) for e in make_edits(7, 24, 24, seed=9)]
    sequential = scorer.score_sync(decoded)
    threads = cv2.getNumThreads()
    try:
        scorer.start_threads()
        assert cv2.getNumThreads() == 1
        parallel = scorer.score_sync(decoded)
    finally:
        asyncio.run(scorer.close())
        cv2.setNumThreads(threads)
    assert [(o.edit_id, o.score, o.components) for o in parallel] == [
        (o.edit_id, o.score, o.components) for o in sequential
    ]


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
