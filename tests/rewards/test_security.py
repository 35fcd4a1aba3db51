"""Reward services beyond loopback: TLS and a token, or an explicit `insecure: true`; a client without the
token is refused (UNAUTHENTICATED) before its request is read, one with it scores. Loopback stays plain."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.client import RewardClient, RewardServiceError
from cocoedit.rewards.config import ClientConfig, PixelConfig, ServerConfig
from cocoedit.rewards.hosting import BackgroundServer
from cocoedit.rewards.pixel import PixelScorer
from tests.rewards.conftest import make_edits

TOKEN = "f" * 64


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl), and a token file."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=cocoedit-test",
        ]
        + [
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    (d / "token").write_text(TOKEN + "\n")
    return {"cert": str(d / "cert.pem"), "key": str(d / "key.pem"), "token": str(d / "token")}


def test_beyond_loopback_without_tls_and_token_refuses_to_start() -> None:
    with pytest.raises(RuntimeError) as err:
        BackgroundServer(PixelScorer(PixelConfig()), ServerConfig(host="0.0.0.0", port=0)).start()
    assert "would listen on 0.0.0.0, beyond loopback, without tls_cert_file, tls_key_file, token_file" in str(
        err.value.__cause__
    )
    assert "rewards.pixel.server.insecure=true" in str(err.value.__cause__)


def test_a_client_without_the_token_is_refused_and_one_with_it_scores(tls: dict[str, str]) -> None:
    cfg = ServerConfig(
        host="127.0.0.1", tls_cert_file=tls["cert"], tls_key_file=tls["key"], token_file=tls["token"]
    )
    with BackgroundServer(PixelScorer(PixelConfig()), cfg) as srv:
        ca = grpc.ssl_channel_credentials(root_certificates=Path(tls["cert"]).read_bytes())
        request = reward_pb2.ScoreRequest(edits=make_edits(1, 8, 8))
        for metadata in ((), (("authorization", "Bearer " + "0" * 64),)):
            with grpc.secure_channel(srv.address, ca) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    reward_pb2_grpc.RewardServiceStub(channel).Score(request, timeout=20, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "needs its token" in err.value.details()
        assert srv.server.servicer.score_calls == 0  # nothing was read or scored
        with grpc.insecure_channel(srv.address) as plain:  # no TLS at all: the handshake fails
            with pytest.raises(grpc.RpcError):
                reward_pb2_grpc.RewardServiceStub(plain).Score(request, timeout=5)

        no_token = RewardClient([srv.address], ClientConfig(tls_ca_file=tls["cert"], retries=0), "pixel")
        with pytest.raises(RewardServiceError, match="UNAUTHENTICATED"):
            no_token.score(make_edits(1, 8, 8))
        client = RewardClient(
            [srv.address],
            ClientConfig(tls_ca_file=tls["cert"], token_file=tls["token"], timeout_s=30),
            "pixel",
        )
        client.wait_ready(30)  # health checks carry the token too
        out = client.score(make_edits(2, 16, 16))
        assert all(o.error is None and 0.0 <= o.score <= 1.0 for o in out)
        client.close()
        no_token.close()
