"""Synchronous client of a reward service with several replicas (the training driver is synchronous).

    client = RewardClient(["127.0.0.1:50051", "127.0.0.1:50052"], ClientConfig(), service="pixel")
    client.wait_ready(timeout_s=60)
    outcomes = client.score([make_edit("e0", "g0", 3, "make the cup red", src, out, mask)])

Every call has a deadline (cfg.timeout_s). Requests of up to cfg.batch_edits edits (and at most
cfg.max_message_mb on the wire) go out in parallel to
the least-loaded replica (ties round-robin). Only UNAVAILABLE and RESOURCE_EXHAUSTED are retried,
with exponential backoff, on another replica when there is one; every other error, and running out
of retries, raises RewardServiceError naming the service, the addresses and the last error.
Per-edit errors come back as EditOutcome.error, never dropped. `score(edits, groups)`: what the edits
of a group share (source, mask, target PNG) travels once per request in a `Group`, not in every edit.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.config import ClientConfig
from cocoedit.rewards.images import WIRE_IMAGE_COMPRESS_LEVEL, encode_png
from cocoedit.rewards.security import client_channel
from cocoedit.rewards.server import SERVICE_NAME, grpc_message_options
from cocoedit.telemetry import record_reward_latency

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Bytes of a request's message kept free of edits when splitting by size (framing of each edit).
REQUEST_SLACK_BYTES = 64 * 1024
ImageLike = Union[np.ndarray, torch.Tensor]


class RewardServiceError(RuntimeError):
    """A reward call that failed for good (bad request, server error, or retries used up)."""


def _to_numpy_uint8(image: ImageLike, field: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{field} must be a numpy array or torch tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"{field} must be uint8 [H, W, 3] (got {image.dtype}); convert floats in [0, 1] with "
            "(x * 255).round().clamp(0, 255).to(torch.uint8)"
        )
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        raise ValueError(
            f"{field} looks channels-first {tuple(image.shape)}; send [H, W, 3] (.permute(1, 2, 0))"
        )
    return image


def _mask_uint8(mask: ImageLike) -> np.ndarray:
    """[H, W] uint8 with 255 = edit from a bool / {0,1} / {0,255} / float-in-[0,1] mask ([1, H, W] ok)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"edit_mask must be a numpy array or torch tensor, got {type(mask).__name__}")
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[2]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:2])
    if mask.ndim != 2:
        raise ValueError(f"edit_mask must be [H, W] (or [1, H, W]), got shape {tuple(mask.shape)}")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8) * 255
    if mask.dtype == np.uint8:
        # {0, 1} masks would read as "keep everything" once in a PNG (1/255 < 0.5): scale them.
        return mask * 255 if mask.max(initial=0) <= 1 else mask
    if np.issubdtype(mask.dtype, np.floating):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError(f"float edit_mask must be in [0, 1], got [{mask.min()}, {mask.max()}]")
        return (np.asarray(mask) * 255).round().astype(np.uint8)
    raise ValueError(f"edit_mask dtype {mask.dtype} not supported; use bool, uint8 or float in [0, 1]")


def make_edit(
    edit_id: str,
    group_id: str,
    policy_version: int,
    instruction: str,
    source_image: ImageLike,
    edited_image: ImageLike,
    edit_mask: Optional[ImageLike] = None,
    target_image: Optional[ImageLike] = None,
) -> reward_pb2.Edit:
    """A wire Edit from uint8 [H, W, 3] images (numpy or torch) and an [H, W] mask (1/255/True = edit).

    Images are stored PNGs (WIRE_IMAGE_COMPRESS_LEVEL), the mask a compressed one (it shrinks ~100x).
    """

    return reward_pb2.Edit(
        edit_id=edit_id,
        group_id=group_id,
        policy_version=int(policy_version),
        instruction=instruction,
        source_image=wire_image(source_image, "source_image"),
        edited_image=wire_image(edited_image, "edited_image"),
        edit_mask=b"" if edit_mask is None else wire_mask(edit_mask),
        target_image=b"" if target_image is None else wire_image(target_image, "target_image"),
    )


def wire_image(array: ImageLike, field: str) -> bytes:
    """The PNG bytes an Edit carries for a uint8 [H, W, 3] image (WIRE_IMAGE_COMPRESS_LEVEL)."""
    return encode_png(_to_numpy_uint8(array, field), WIRE_IMAGE_COMPRESS_LEVEL)


def wire_mask(mask: ImageLike) -> bytes:
    """The PNG bytes an Edit carries for an [H, W] edit mask (see make_edit), compressed."""
    return encode_png(_mask_uint8(mask))


def outcome_from_proto(item: reward_pb2.EditScore) -> EditOutcome:
    kind = item.WhichOneof("result")
    if kind == "scored":
        return EditOutcome(
            item.edit_id,
            score=item.scored.score,
            components=dict(item.scored.components),
            warnings=list(item.warnings),
        )
    if kind == "error":
        return EditOutcome(item.edit_id, error=item.error, warnings=list(item.warnings))
    raise RewardServiceError(f"reply for edit {item.edit_id!r} has neither a score nor an error")


class _Replica:
    def __init__(self, address: str, cfg: ClientConfig) -> None:
        self.address = address
        # TLS and the service token when configured (rewards.security); plain on loopback otherwise
        calls, self.channel = client_channel(address, cfg, grpc_message_options(cfg.max_message_mb))
        self.stub = reward_pb2_grpc.RewardServiceStub(calls)
        self.health = health_pb2_grpc.HealthStub(calls)
        self.in_flight = 0
        self.retired = False


class RewardClient:
    """Client of one reward service over replicas `addresses` ("host:port"); thread-safe."""

    def __init__(self, addresses: Sequence[str], cfg: ClientConfig, service: str) -> None:
        if cfg.batch_edits < 1:
            raise ValueError(f"rewards.client.batch_edits={cfg.batch_edits} must be >= 1")
        if cfg.timeout_s <= 0:
            raise ValueError(f"rewards.client.timeout_s={cfg.timeout_s} must be > 0")
        self.cfg = cfg
        self.service = service
        self._lock = threading.Lock()
        self._replicas: list[_Replica] = []
        self._rr = itertools.count()
        self.set_addresses(addresses)

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return [r.address for r in self._replicas]

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Replace the replica set (replicas added or removed while training); in-flight calls finish."""
        addresses = list(dict.fromkeys(addresses))
        if not addresses:
            raise ValueError(f"reward service {self.service!r}: no replica addresses given")
        for a in addresses:
            host, sep, port = a.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"reward service {self.service!r}: address {a!r} must look like host:port")
        with self._lock:
            current = {r.address: r for r in self._replicas}
            self._replicas = [current.pop(a) if a in current else _Replica(a, self.cfg) for a in addresses]
            for r in current.values():
                r.retired = True
                if r.in_flight == 0:
                    r.channel.close()

    def close(self) -> None:
        with self._lock:
            for r in self._replicas:
                r.channel.close()
            self._replicas = []

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, avoid: Optional[_Replica]) -> _Replica:
        with self._lock:
            if not self._replicas:
                raise RewardServiceError(f"reward service {self.service!r}: client is closed (no replicas)")
            candidates = [r for r in self._replicas if r is not avoid] or self._replicas
            start = next(self._rr) % len(candidates)
            rotated = candidates[start:] + candidates[:start]
            best = min(rotated, key=lambda r: r.in_flight)  # least loaded, ties round-robin
            best.in_flight += 1
            return best

    def _release(self, replica: _Replica) -> None:
        with self._lock:
            replica.in_flight -= 1
            if replica.retired and replica.in_flight == 0:
                replica.channel.close()

    def _call(self, what: str, fn):
        """fn(replica) with deadline-carrying RPCs; retries RETRYABLE codes on other replicas."""
        attempts = 1 + max(0, self.cfg.retries)
        last: Optional[str] = None
        tried: list[str] = []
        replica: Optional[_Replica] = None
        for attempt in range(attempts):
            replica = self._acquire(avoid=replica)
            tried.append(replica.address)
            try:
                return fn(replica)
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                last = f"{code.name} from {replica.address}: {details}"
                if code not in RETRYABLE:
                    raise RewardServiceError(
                        f"reward service {self.service!r} {what} failed: {last} (not retried; replicas "
                        f"{self.addresses})"
                    ) from e
            finally:
                self._release(replica)
            if attempt + 1 < attempts:
                time.sleep(self.cfg.backoff_s * (2**attempt))
        raise RewardServiceError(
            f"reward service {self.service!r} {what} failed after {attempts} attempts on {tried} "
            f"(replicas {self.addresses}); last error: {last}. Are the servers up and not overloaded?"
        )

    def info(self) -> reward_pb2.InfoReply:
        """The Info of one replica; raises if it serves another service than this client's."""
        reply = self._call(
            "Info", lambda r: r.stub.Info(reward_pb2.InfoRequest(), timeout=self.cfg.timeout_s)
        )
        if reply.service != self.service:
            raise RewardServiceError(
                f"addresses {self.addresses} given for service {self.service!r} serve {reply.service!r}"
            )
        return reply

    def wait_ready(self, timeout_s: Optional[float] = None) -> list[str]:
        """Block until at least one replica's health is SERVING; return the SERVING addresses."""
        timeout_s = self.cfg.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        last: dict[str, str] = {}
        while True:
            with self._lock:
                replicas = list(self._replicas)
            serving = []
            for r in replicas:
                try:
                    reply = r.health.Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                        timeout=max(0.05, min(2.0, deadline - time.monotonic())),
                    )
                    last[r.address] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        serving.append(r.address)
                except grpc.RpcError as e:
                    last[r.address] = f"{e.code().name}: {e.details()}"
            if serving:
                return serving
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no replica of reward service {self.service!r} reported SERVING within {timeout_s} s; "
                    f"last health per address: {last}. Start it with `cocoedit serve {self.service}` or "
                    "check its log (a model may still be loading: raise rewards.client.ready_timeout_s)"
                )
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def score_request(
        self, edits: Sequence[reward_pb2.Edit], groups: Sequence[reward_pb2.Group] = ()
    ) -> list[EditOutcome]:
        """One Score call (len(edits) <= server max_batch_edits), with retries; outcomes in input order."""
        request = reward_pb2.ScoreRequest(edits=list(edits), groups=list(groups))
        t0 = time.perf_counter()
        reply = self._call("Score", lambda r: r.stub.Score(request, timeout=self.cfg.timeout_s))
        record_reward_latency(self.service, time.perf_counter() - t0)
        by_id = {item.edit_id: item for item in reply.scores}
        missing = [e.edit_id for e in edits if e.edit_id not in by_id]
        if missing or len(by_id) != len(edits):
            raise RewardServiceError(
                f"reward service {self.service!r} replied with {len(reply.scores)} scores for {len(edits)} "
                f"edits (missing {missing[:5]})"
            )
        return [outcome_from_proto(by_id[e.edit_id]) for e in edits]

    def _requests(
        self, edits: list[reward_pb2.Edit], groups: dict[str, reward_pb2.Group]
    ) -> list[list[reward_pb2.Edit]]:
        """Consecutive edits in requests of at most cfg.batch_edits edits and cfg.max_message_mb bytes
        (a group's shared images count once in each request that holds an edit of it)."""
        limit = self.cfg.max_message_mb * 1024 * 1024 - REQUEST_SLACK_BYTES
        requests: list[list[reward_pb2.Edit]] = [[]]
        size = 0
        held: set[str] = set()  # groups in the current request
        for edit in edits:
            group = groups.get(edit.group_id)
            shared = group.ByteSize() if group is not None and edit.group_id not in held else 0
            n = edit.ByteSize() + shared
            if n > limit:
                raise ValueError(
                    f"edit {edit.edit_id!r} is {n / 2**20:.1f} MB on the wire, over rewards.client."
                    f"max_message_mb={self.cfg.max_message_mb} (and the server's max_message_mb): send "
                    "smaller images or raise both limits"
                )
            if requests[-1] and (len(requests[-1]) == self.cfg.batch_edits or size + n > limit):
                requests.append([])
                held.clear()
                size, n = 0, edit.ByteSize() + (0 if group is None else group.ByteSize())
            requests[-1].append(edit)
            size += n
            if group is not None:
                held.add(edit.group_id)
        return requests

    def score(
        self, edits: Sequence[reward_pb2.Edit], groups: Sequence[reward_pb2.Group] = ()
    ) -> list[EditOutcome]:
        """Score any number of edits: requests of cfg.batch_edits edits at most (fewer where their
        bytes would pass cfg.max_message_mb), in parallel over the replicas. `groups`: the images the
        edits of each group share (an edit of a listed group carries no source_image of its own); each
        request carries the groups of its edits."""
        edits = list(edits)
        if not edits:
            return []
        ids = [e.edit_id for e in edits]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"duplicate edit_id {dup!r}: ids must be unique within one score() call")
        by_id = {g.group_id: g for g in groups}
        chunks = self._requests(edits, by_id)
        shared = [[by_id[g] for g in dict.fromkeys(e.group_id for e in c) if g in by_id] for c in chunks]
        if len(chunks) == 1:
            return self.score_request(chunks[0], shared[0])
        workers = min(len(chunks), 2 * len(self.addresses))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.service}-score") as pool:
            results = list(pool.map(self.score_request, chunks, shared))
        return [o for part in results for o in part]
