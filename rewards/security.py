"""TLS and a bearer token for reward services bound beyond loopback; loopback-only services stay plain.

    check_exposure(cfg)                  # ValueError unless loopback, secured, or explicitly insecure
                                         # (at config load: rewards.config.check_tls_named)
    creds = server_credentials(cfg)      # grpc.ssl_server_credentials, or None (plain)
    interceptors = token_interceptors(cfg)
    channel = client_channel(address, cfg, options)   # TLS + token when the client config has them

The token comes from the file `token_file` names, else the environment variable COCOEDIT_REWARD_TOKEN;
certificates and keys from files (PEM). Servers compare tokens in constant time and refuse a call
without the token (UNAUTHENTICATED) before reading its request.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any, Optional

import grpc

from cocoedit.rewards.config import TOKEN_ENV, is_loopback


def read_token(token_file: Optional[str], key: str) -> Optional[str]:
    """The token of `token_file`, else of $COCOEDIT_REWARD_TOKEN, else None (never logged)."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ValueError(
                f"{key}={token_file} does not exist; write the service token there (e.g. openssl rand -hex 32)"
            )
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{key}={token_file} is empty; write the service token there")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _read(path: Optional[str], key: str) -> bytes:
    if not path or not Path(path).is_file():
        raise ValueError(f"{key}={path} is not a file; give a PEM file")
    return Path(path).read_bytes()


def check_exposure(cfg: Any, service: str) -> None:
    """Refuse a server bound beyond loopback without TLS and a token, unless cfg.insecure."""
    if is_loopback(cfg.host) or cfg.insecure:
        return
    missing = [k for k in ("tls_cert_file", "tls_key_file") if not getattr(cfg, k)]
    if read_token(cfg.token_file, f"rewards.{service}.server.token_file") is None:
        missing.append(f"token_file (or ${TOKEN_ENV})")
    if missing:
        raise ValueError(
            f"the {service} service would listen on {cfg.host}, beyond loopback, without "
            f"{', '.join(missing)}: anyone on the network could score, flood or tamper with it. Set "
            f"rewards.{service}.server.tls_cert_file / tls_key_file / token_file (README, Cluster: security), "
            f"or rewards.{service}.server.insecure=true on a network you trust"
        )


def server_credentials(cfg: Any, service: str) -> Optional[grpc.ServerCredentials]:
    if not (cfg.tls_cert_file or cfg.tls_key_file):
        return None
    key = _read(cfg.tls_key_file, f"rewards.{service}.server.tls_key_file")
    cert = _read(cfg.tls_cert_file, f"rewards.{service}.server.tls_cert_file")
    return grpc.ssl_server_credentials([(key, cert)])


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; others end UNAUTHENTICATED unread."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this reward service needs its token: set rewards.client.token_file or $" + TOKEN_ENV,
            )

        # request-streaming: the refused call's request is never read
        self._refuse = grpc.stream_unary_rpc_method_handler(refuse)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        return self._refuse


def token_interceptors(cfg: Any, service: str) -> list[grpc.aio.ServerInterceptor]:
    token = read_token(cfg.token_file, f"rewards.{service}.server.token_file")
    if token is not None and server_credentials(cfg, service) is None and not is_loopback(cfg.host):
        raise ValueError(
            f"rewards.{service}.server has a token but no TLS: beyond loopback the token would cross the "
            "network in clear; set tls_cert_file and tls_key_file"
        )
    return [_TokenCheck(token)] if token is not None else []


class _WithToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else _Details(details, metadata)
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list) -> None:
        self.method, self.timeout, self.metadata = base.method, base.timeout, metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def client_channel(
    address: str, cfg: Any, options: list[tuple[str, Any]]
) -> tuple[grpc.Channel, grpc.Channel]:
    """(channel for stubs, underlying channel to close) to `address`: TLS when cfg.tls_ca_file is set,
    the token (cfg.token_file or $COCOEDIT_REWARD_TOKEN) on every call when there is one."""
    token = read_token(cfg.token_file, "rewards.client.token_file")
    if cfg.tls_ca_file:
        ca = _read(cfg.tls_ca_file, "rewards.client.tls_ca_file")
        raw = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca), options=options
        )
    else:
        if token is not None and not is_loopback(address.rsplit(":", 1)[0]):
            raise ValueError(
                f"rewards.client has a token but no tls_ca_file: it would go to {address} in clear; set "
                "rewards.client.tls_ca_file (the CA that signed the services' certificates)"
            )
        raw = grpc.insecure_channel(address, options=options)
    return (grpc.intercept_channel(raw, _WithToken(token)) if token is not None else raw), raw
