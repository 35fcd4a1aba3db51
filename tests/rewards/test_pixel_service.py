"""The pixel service and the shared server: real gRPC on 127.0.0.1, real scorers, every bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cocoedit.protos import reward_pb2
from cocoedit.rewards.client import RewardClient, make_edit
from cocoedit.rewards.config import ClientConfig, PixelConfig
from cocoedit.rewards.images import ImageDecodeError, decode_png, encode_png
from cocoedit.rewards.pixel import PixelScorer
from cocoedit.rewards.server import SERVICE_NAME
from tests.rewards.conftest import (
    GateScorer,
    TargetScorer,
    expected_scores,
    make_edits,
    stub,
    synthetic_edit_arrays,
)

ROOT = Path(__file__).resolve().parents[2]


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
