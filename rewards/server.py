"""The one gRPC server of every reward service (pixel, mllm, synthetic), around a `Scorer`.

    srv = await start_server(PixelScorer(PixelConfig()), ServerConfig(port=0))   # in an event loop
    with BackgroundServer(scorer, ServerConfig()) as srv: ...srv.address...     # rewards.hosting
    run_standalone(scorer, cfg)                                                 # rewards.hosting

What every service gets from here, so they behave the same:
  - `grpc.aio`, explicit max message sizes, reflection, grpc.health.v1 (NOT_SERVING until
    `await scorer.load()` returned, then SERVING; NOT_SERVING again while shutting down);
  - at most `max_concurrent_calls` Score calls at once, further calls get RESOURCE_EXHAUSTED before
    a byte of their request is read (Score is registered as request-streaming so that the handler runs
    before the message is received), messages over `max_message_mb` are refused by gRPC, and gRPC
    admits at most `max_concurrent_calls` + 4 calls of any method: a flood holds at most ~3 x
    `max_message_mb` per admitted call (bench/pixel_flood.py); after large requests the freed memory
    is returned to the system (rewards.memory);
  - bounded decoding: every PNG's header is read before anything is decoded; an image over
    `max_image_pixels` and every edit past the request's `max_request_decoded_mb` get a per-edit error
    naming the size and the limit; the request is decoded and scored in chunks of ~`chunk_decoded_mb`
    (the next chunk decodes in a thread pool while the scorer works on one), so decoded images take
    ~2 chunks of memory whatever the request holds; the source, mask and target of a group
    (`ScoreRequest.groups`) are decoded once for its edits, which share the same read-only arrays, and
    count once in the budget (rewards/edits.py, RequestEdits);
  - request errors (bytes that are not a ScoreRequest, empty batch, too many edits, duplicate or empty
    edit ids) -> INVALID_ARGUMENT; per-edit problems (undecodable bytes, size or channel mismatch,
    16-bit PNGs, missing mask/target/instruction, non-finite scores) -> a per-edit error naming the
    field; a scorer that raises -> INTERNAL for that call only; while loading -> UNAVAILABLE (clients
    retry);
  - shutdown: calls still running after the grace period are cancelled and their decoding and
    scoring stop within one image / row band, so the process exits right after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Union

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import ServerConfig
from cocoedit.rewards.edits import MB, RequestEdits, check_outcome
from cocoedit.rewards.memory import release_free_memory
from cocoedit.rewards.security import check_exposure, server_credentials, token_interceptors
from cocoedit.telemetry import record_server_request

log = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
# gRPC admits this many calls beyond max_concurrent_calls (health checks, Info, reflection, and Score
# calls it answers RESOURCE_EXHAUSTED without reading them)
OTHER_CALLS = 4
# A fixed HTTP/2 window per call (no bandwidth-delay probing, which grows it towards the whole message):
# gRPC buffers at most this much of a call that is not being read
FLOW_CONTROL = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4 * MB)]
# after Score calls that held this many request bytes, the freed memory goes back to the system
TRIM_AFTER_BYTES = 32 * MB


def grpc_message_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Channel/server options that raise gRPC's 4 MiB default message limits, both directions."""
    n = int(max_message_mb) * 1024 * 1024
    return [("grpc.max_send_message_length", n), ("grpc.max_receive_message_length", n)]


def _cocoedit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cocoedit")
    except PackageNotFoundError:
        return "unknown (not installed)"


@dataclass(frozen=True)
class _CorruptRequest:
    """What the request deserializer returns for bytes that are not the expected message."""

    message: str


def _parser(message_type: type[Message]) -> Callable[[bytes], object]:
    """A request deserializer that never raises (a raising one makes gRPC answer UNKNOWN)."""
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> object:
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return _CorruptRequest(
                f"request bytes ({len(data)}) are not a valid {name} ({e}); build requests with "
                "cocoedit.protos.reward_pb2 or RewardClient"
            )

    return parse


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Score and Info for one scorer; see the module docstring for what it checks."""

    def __init__(self, scorer: Scorer, cfg: ServerConfig) -> None:
        self.scorer = scorer
        self.cfg = cfg
        self.ready = False
        self.load_error: Optional[BaseException] = None
        self.active_calls = 0
        self.score_calls = 0  # accepted Score calls (served or failed inside), for tests and metrics
        self._decode_pool = ThreadPoolExecutor(
            max_workers=max(1, cfg.decode_workers), thread_name_prefix="png"
        )
        self._closing = threading.Event()  # decoding threads stop between images once set
        self._parse_score = _parser(reward_pb2.ScoreRequest)
        self._untrimmed_bytes = 0  # request bytes held since the last release_free_memory

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register Score and Info; requests that do not parse reach the handlers as _CorruptRequest."""
        handlers = {
            # request-streaming on this side only (the wire is the same as unary): Score runs before the
            # request is received, so a call over the limit is refused before its bytes are held
            "Score": grpc.stream_unary_rpc_method_handler(
                self.Score, response_serializer=reward_pb2.ScoreReply.SerializeToString
            ),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.Info,
                request_deserializer=_parser(reward_pb2.InfoRequest),
                response_serializer=reward_pb2.InfoReply.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    async def Info(
        self, request: Union[reward_pb2.InfoRequest, _CorruptRequest], context: grpc.aio.ServicerContext
    ) -> reward_pb2.InfoReply:
        if isinstance(request, _CorruptRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return reward_pb2.InfoReply(
            service=self.scorer.service,
            score_name=self.scorer.score_name,
            settings={k: str(v) for k, v in self.scorer.settings().items()},
            version=_cocoedit_version(),
            max_batch_edits=self.cfg.max_batch_edits,
        )

    async def Score(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreReply:
        """Refuse what can be refused before the request is read (not loaded, busy), then read it."""
        name = self.scorer.service
        if self.load_error is not None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"{name} scorer failed to load: {self.load_error!r}"
            )
        if not self.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} scorer is still loading; retry later")
        if self.active_calls >= self.cfg.max_concurrent_calls:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name} server busy: {self.active_calls} calls in flight (max_concurrent_calls="
                f"{self.cfg.max_concurrent_calls}); retry with backoff or add replicas",
            )
        self.active_calls += 1
        t0 = time.perf_counter()
        try:
            raw = await self._read_one(requests, context)
            self._untrimmed_bytes += len(raw)
            request = self._parse_score(raw)
            del raw  # the parsed message holds its own copy
            if isinstance(request, _CorruptRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            assert isinstance(request, reward_pb2.ScoreRequest)  # context.abort raised for the rest above
            problem = self._check_request(request)
            if problem is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            self.score_calls += 1
            return await self._score(request, context)
        finally:
            self.active_calls -= 1
            record_server_request(self.scorer.service, time.perf_counter() - t0)  # no-op outside Ray
            if self.active_calls == 0 and self._untrimmed_bytes >= TRIM_AFTER_BYTES:
                self._untrimmed_bytes = 0
                request = None  # freed before the trim, not after it
                await asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    async def _read_one(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """The one request message of a Score call (its raw bytes)."""
        raw = None
        async for message in requests:
            if raw is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Score takes one ScoreRequest per call")
            raw = message
        if raw is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the Score call carried no ScoreRequest")
        assert raw is not None  # context.abort raised above
        return raw

    def _check_request(self, request: reward_pb2.ScoreRequest) -> Optional[str]:
        """Why the whole request is invalid (INVALID_ARGUMENT), or None."""
        n = len(request.edits)
        if n == 0:
            return "empty ScoreRequest: send at least one edit"
        if n > self.cfg.max_batch_edits:
            return (
                f"{n} edits in one request > max_batch_edits={self.cfg.max_batch_edits}; split the request "
                "(ClientConfig.batch_edits)"
            )
        seen: set[str] = set()
        for i, e in enumerate(request.edits):
            if not e.edit_id:
                return f"edits[{i}].edit_id is empty; every edit needs a unique id"
            if e.edit_id in seen:
                return f"duplicate edit_id {e.edit_id!r} (edits[{i}]); ids must be unique within a request"
            seen.add(e.edit_id)
        groups = [g.group_id for g in request.groups]
        if len(set(groups)) != len(groups) or "" in groups:
            return "ScoreRequest.groups: every group needs a group_id, each sent once per request"
        return None

    def _plan(self, request: reward_pb2.ScoreRequest) -> tuple[RequestEdits, dict[int, str], list[list[int]]]:
        """The request's edits, from the PNG headers alone: per-edit errors by index, and the chunks
        (lists of indices, in order) of the edits to decode (RequestEdits.plan)."""
        edits = RequestEdits(request, self.scorer, self.cfg.max_image_pixels)
        return edits, *edits.plan(self.cfg.max_request_decoded_mb, self.cfg.chunk_decoded_mb)

    def _decode_many(self, edits: RequestEdits, indices: list[int]) -> list[DecodedEdit | str]:
        out: list[DecodedEdit | str] = []
        for i in indices:
            if self._closing.is_set():
                out.append("server shutting down")
                continue
            try:
                out.append(edits.decode(i))
            except ValueError as e:
                out.append(str(e))
        return out

    async def _decode_chunk(self, edits: RequestEdits, chunk: list[int]) -> list[DecodedEdit | str]:
        """Decode the chunk's edits split over the decode threads; results in order."""
        loop = asyncio.get_running_loop()
        size = -(-len(chunk) // max(1, min(self.cfg.decode_workers, len(chunk))))
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, self._decode_many, edits, chunk[i : i + size])
                for i in range(0, len(chunk), size)
            )
        )
        decoded = []
        for part in parts:
            decoded += part
            part.clear()  # the executor's futures keep their results in reference cycles until a collection
        return decoded

    async def _score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreReply:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        # a group's images (sent once) are decoded once for its edits
        edits, errors, chunks = await loop.run_in_executor(self._decode_pool, self._plan, request)
        results: dict[int, EditOutcome | str] = dict(errors)

        def decode(k: int) -> Optional[asyncio.Task]:
            return asyncio.ensure_future(self._decode_chunk(edits, chunks[k])) if k < len(chunks) else None

        pending = decode(0)
        try:
            for k, chunk in enumerate(chunks):
                assert pending is not None  # decode(k) is a task for every k < len(chunks)
                decoded = await pending
                pending = decode(k + 1)  # decodes while this chunk is scored
                valid, indices = [], []
                for i, d in zip(chunk, decoded, strict=True):
                    if isinstance(d, str):
                        results[i] = d
                    else:
                        valid.append(d)
                        indices.append(i)
                if valid:
                    results.update(zip(indices, await self._score_valid(valid, context), strict=True))
                # this chunk's pixels go now, not when the collector breaks the futures' reference cycles
                decoded.clear()
                valid.clear()
        finally:
            if pending is not None:
                pending.cancel()
        reply = reward_pb2.ScoreReply(service=self.scorer.service)
        for i, edit in enumerate(edits.edits):
            item = reply.scores.add(edit_id=edit.edit_id)
            result = results[i]
            if isinstance(result, str):
                item.error = result
                continue
            item.warnings.extend(result.warnings)
            problem = check_outcome(result)
            if problem is not None:
                item.error = problem
            elif result.error is not None:
                item.error = result.error
            else:
                assert result.score is not None  # check_outcome: error is None, so score is set
                item.scored.score = float(min(max(result.score, 0.0), 1.0))
                item.scored.components.update({k: float(v) for k, v in result.components.items()})
        reply.elapsed_s = time.perf_counter() - t0
        return reply

    async def _score_valid(
        self, valid: list[DecodedEdit], context: grpc.aio.ServicerContext
    ) -> list[EditOutcome]:
        """The scorer's outcomes for decoded edits, in order; INTERNAL for this call if it raises."""
        try:
            scored = await self.scorer.score(valid)
        except Exception as e:  # one failing call must not take the server down
            log.exception("%s scorer raised on %d edits", self.scorer.service, len(valid))
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{self.scorer.service} scorer raised {type(e).__name__}: {e}"
            )
        ids = [o.edit_id for o in scored]
        if ids != [d.edit_id for d in valid]:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"{self.scorer.service} scorer returned outcomes for {ids[:4]}... but was asked for "
                f"{[d.edit_id for d in valid][:4]}... (count {len(ids)} vs {len(valid)}, order must match)",
            )
        return scored

    def close(self) -> None:
        self._closing.set()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)


class RewardServer:
    """A started reward server: `.port`, `.address`, `await stop(grace_s)`, `await wait_for_termination()`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        servicer: RewardServicer,
        health_servicer: health.aio.HealthServicer,
        host: str,
        port: int,
    ) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.load_task: Optional[asyncio.Task] = None
        self._stopped = False

    @property
    def scorer(self) -> Scorer:
        return self.servicer.scorer

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _load(self) -> None:
        try:
            await self.scorer.load()
        except BaseException as e:
            self.servicer.load_error = e
            log.exception("%s scorer failed to load", self.scorer.service)
            raise
        self.servicer.ready = True
        await self.set_serving(True)
        log.info("%s scorer loaded; serving on %s", self.scorer.service, self.address)

    async def wait_loaded(self) -> None:
        """Wait for the scorer's load() (re-raises its error)."""
        if self.load_task is not None:
            await asyncio.shield(self.load_task)

    async def stop(self, grace_s: Optional[float] = None) -> None:
        """Health NOT_SERVING, then finish in-flight calls for up to grace_s (default cfg.grace_s), close."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.servicer.cfg.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        await self.server.stop(grace)
        self.servicer.close()
        await self.scorer.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def start_server(scorer: Scorer, cfg: ServerConfig, wait_loaded: bool = True) -> RewardServer:
    """Bind `cfg.host:cfg.port` (0 = a free port), start serving (health NOT_SERVING), run scorer.load().

    With wait_loaded (default) it returns once load() finished and health is SERVING (a failed load
    stops the server and raises); otherwise load() runs in the background (`await srv.wait_loaded()`).
    """
    check_exposure(cfg, scorer.service)
    credentials = server_credentials(cfg, scorer.service)
    servicer = RewardServicer(scorer, cfg)
    server = grpc.aio.server(
        interceptors=token_interceptors(cfg, scorer.service),
        options=grpc_message_options(cfg.max_message_mb) + [("grpc.so_reuseport", 0)] + FLOW_CONTROL,
        maximum_concurrent_rpcs=cfg.max_concurrent_calls + OTHER_CALLS,
    )
    servicer.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    from grpc_reflection.v1alpha import reflection

    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        address = f"{cfg.host}:{cfg.port}"
        port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    except RuntimeError as e:
        raise RuntimeError(f"cannot bind {cfg.host}:{cfg.port} for the {scorer.service} service: {e}") from e
    srv = RewardServer(server, servicer, health_servicer, cfg.host, port)
    await srv.set_serving(False)
    await server.start()
    srv.load_task = asyncio.get_running_loop().create_task(srv._load())
    if wait_loaded:
        try:
            await srv.load_task
        except BaseException:
            await srv.stop(0)
            raise
    return srv
