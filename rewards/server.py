"""The one gRPC server of every reward service (pixel, mllm, synthetic), around a `Scorer`.

    srv = await start_server(PixelScorer(PixelConfig()), ServerConfig(port=0))   # in an event loop
    with BackgroundServer(scorer, ServerConfig()) as srv: ...srv.address...     # tests, Ray actors
    run_standalone(scorer, cfg)                                                 # `cocoedit serve`

What every service gets from here, so they behave the same:
  - `grpc.aio`, explicit max message sizes, reflection, grpc.health.v1 (NOT_SERVING until
    `await scorer.load()` returned, then SERVING; NOT_SERVING again while shutting down);
  - at most `max_concurrent_calls` Score calls at once, further calls get RESOURCE_EXHAUSTED;
  - PNG decoding and validation in a thread pool (not on the event loop);
  - request errors (empty batch, too many edits, duplicate or empty edit ids) -> INVALID_ARGUMENT;
    per-edit problems (undecodable bytes, size or channel mismatch, missing mask/target/instruction,
    non-finite scores) -> a per-edit error naming the field; a scorer that raises -> INTERNAL for
    that call only; while loading -> UNAVAILABLE (clients retry).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cocoedit.protos import reward_pb2, reward_pb2_grpc
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import ServerConfig
from cocoedit.rewards.images import ImageDecodeError, decode_png
from cocoedit.telemetry import record_server_request

log = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


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


def _decode_rgb(data: bytes, field: str, required: bool) -> Optional[np.ndarray]:
    """[H, W, 3] uint8 from PNG bytes of RGB or grey; None when absent and not required."""
    if not data:
        if required:
            raise ValueError(f"{field}: missing (empty bytes)")
        return None
    try:
        image = decode_png(data)
    except ImageDecodeError as e:
        raise ValueError(f"{field}: {e}") from None
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] != 3:
        raise ValueError(
            f"{field}: has {image.shape[2]} channels; send RGB (3) or grey (1) PNGs (drop the alpha channel)"
        )
    return image


def decode_edit(edit: reward_pb2.Edit, scorer: Scorer) -> DecodedEdit:
    """Decode and validate one edit for `scorer`; raise ValueError naming the field on bad input."""
    if scorer.needs_instruction and not edit.instruction.strip():
        raise ValueError(f"instruction: empty, but the {scorer.service} service needs the edit instruction")
    source = _decode_rgb(edit.source_image, "source_image", required=True)
    edited = _decode_rgb(edit.edited_image, "edited_image", required=True)
    if edited.shape != source.shape:
        raise ValueError(
            f"edited_image: {edited.shape[1]}x{edited.shape[0]} (WxH) does not match source_image "
            f"{source.shape[1]}x{source.shape[0]}"
        )
    warnings: list[str] = []
    mask = None
    if edit.edit_mask:
        try:
            raw = decode_png(edit.edit_mask)
        except ImageDecodeError as e:
            raise ValueError(f"edit_mask: {e}") from None
        if raw.ndim != 2:
            raise ValueError(
                f"edit_mask: has {raw.shape[2]} channels; send a single-channel (grey) PNG, 255 = edit"
            )
        if raw.shape != source.shape[:2]:
            raise ValueError(
                f"edit_mask: {raw.shape[1]}x{raw.shape[0]} (WxH) does not match source_image "
                f"{source.shape[1]}x{source.shape[0]}"
            )
        if not np.isin(raw, (0, 255)).all():
            warnings.append("edit_mask was not binary (values other than 0 and 255); binarised at 0.5")
        mask = (raw >= 128).astype(np.float32)  # 128/255 >= 0.5 > 127/255
    elif scorer.needs_mask:
        raise ValueError(f"edit_mask: missing, but the {scorer.service} service needs the edit mask")
    target = _decode_rgb(edit.target_image, "target_image", required=scorer.needs_target)
    if target is not None and target.shape != source.shape:
        raise ValueError(
            f"target_image: {target.shape[1]}x{target.shape[0]} (WxH) does not match source_image "
            f"{source.shape[1]}x{source.shape[0]}"
        )
    return DecodedEdit(
        edit_id=edit.edit_id,
        group_id=edit.group_id,
        policy_version=edit.policy_version,
        instruction=edit.instruction,
        source_image=source,
        edited_image=edited,
        edit_mask=mask,
        target_image=target,
        warnings=warnings,
    )


def _decode_many(edits: list[reward_pb2.Edit], scorer: Scorer) -> list[DecodedEdit | str]:
    out: list[DecodedEdit | str] = []
    for edit in edits:
        try:
            out.append(decode_edit(edit, scorer))
        except ValueError as e:
            out.append(str(e))
    return out


def _check_outcome(outcome: EditOutcome) -> Optional[str]:
    """Why a scorer's outcome cannot go on the wire as is, or None."""
    if (outcome.score is None) == (outcome.error is None):
        return "scorer returned neither or both of score and error"
    if outcome.error is not None:
        return None
    if not math.isfinite(outcome.score):
        return f"scorer returned a non-finite score ({outcome.score})"
    if not -1e-6 <= outcome.score <= 1 + 1e-6:
        return f"scorer returned score {outcome.score}, outside [0, 1]"
    bad = {k: v for k, v in outcome.components.items() if not math.isfinite(v)}
    if bad:
        return f"scorer returned non-finite components {bad}"
    return None


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

    async def Info(
        self, request: reward_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.InfoReply:
        return reward_pb2.InfoReply(
            service=self.scorer.service,
            score_name=self.scorer.score_name,
            settings={k: str(v) for k, v in self.scorer.settings().items()},
            version=_cocoedit_version(),
            max_batch_edits=self.cfg.max_batch_edits,
        )

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreReply:
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
        problem = self._check_request(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.active_calls += 1
        self.score_calls += 1
        t0 = time.perf_counter()
        try:
            return await self._score(request, context)
        finally:
            self.active_calls -= 1
            record_server_request(self.scorer.service, time.perf_counter() - t0)  # no-op outside Ray

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
        return None

    async def _score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreReply:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        edits = list(request.edits)
        parts = max(1, min(self.cfg.decode_workers, len(edits)))
        size = -(-len(edits) // parts)
        decoded_parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, _decode_many, edits[i : i + size], self.scorer)
                for i in range(0, len(edits), size)
            )
        )
        decoded = [d for part in decoded_parts for d in part]
        valid = [d for d in decoded if isinstance(d, DecodedEdit)]
        outcomes: dict[str, EditOutcome] = {}
        if valid:
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
            outcomes = {o.edit_id: o for o in scored}
        reply = reward_pb2.ScoreReply(service=self.scorer.service)
        for edit, d in zip(edits, decoded, strict=True):
            item = reply.scores.add(edit_id=edit.edit_id)
            if isinstance(d, str):
                item.error = d
                continue
            outcome = outcomes[edit.edit_id]
            item.warnings.extend(outcome.warnings)
            problem = _check_outcome(outcome)
            if problem is not None:
                item.error = problem
            elif outcome.error is not None:
                item.error = outcome.error
            else:
                item.scored.score = float(min(max(outcome.score, 0.0), 1.0))
                item.scored.components.update({k: float(v) for k, v in outcome.components.items()})
        reply.elapsed_s = time.perf_counter() - t0
        return reply

    def close(self) -> None:
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
    servicer = RewardServicer(scorer, cfg)
    server = grpc.aio.server(
        options=grpc_message_options(cfg.max_message_mb) + [("grpc.so_reuseport", 0)],
    )
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    from grpc_reflection.v1alpha import reflection

    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
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


class BackgroundServer:
    """A reward server on its own event-loop thread, for tests and Ray actors.

        with BackgroundServer(PixelScorer(PixelConfig()), ServerConfig()) as srv:
            client = RewardClient([srv.address], ClientConfig(), "pixel")

    `start()` returns once the server is bound (and loaded, when wait_loaded); `stop()` shuts it down.
    """

    def __init__(self, scorer: Scorer, cfg: ServerConfig, wait_loaded: bool = True) -> None:
        self.scorer = scorer
        self.cfg = cfg
        self.wait_loaded = wait_loaded
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.server: Optional[RewardServer] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self._done: Optional[asyncio.Event] = None

    @property
    def port(self) -> int:
        return self._require().port

    @property
    def address(self) -> str:
        return self._require().address

    def _require(self) -> RewardServer:
        if self.server is None:
            raise RuntimeError("BackgroundServer is not running; call start() or use it as a context manager")
        return self.server

    def start(self) -> BackgroundServer:
        if self._thread is not None:
            raise RuntimeError("BackgroundServer already started")
        self._thread = threading.Thread(target=self._run, name=f"{self.scorer.service}-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(
                f"{self.scorer.service} server failed to start: {self._error!r}"
            ) from self._error
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._done = asyncio.Event()
        try:
            self.server = await start_server(self.scorer, self.cfg, wait_loaded=self.wait_loaded)
        except BaseException as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        await self._done.wait()

    def run_coroutine(self, coro):  # type: ignore[no-untyped-def]
        """Run a coroutine on the server's loop from another thread; return its result."""
        if self.loop is None:
            raise RuntimeError("BackgroundServer is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self, grace_s: Optional[float] = None) -> None:
        """Stop serving (in-flight calls get up to grace_s) and join the thread. Idempotent."""
        if self._thread is None or self.loop is None or self.server is None:
            return
        if self._thread.is_alive():
            self.run_coroutine(self._shutdown(grace_s))
            self._thread.join()
        self._thread = None

    async def _shutdown(self, grace_s: Optional[float]) -> None:
        try:
            await self._require().stop(grace_s)
        finally:
            assert self._done is not None
            self._done.set()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_standalone(scorer: Scorer, cfg: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (cfg.grace_s). Returns the exit code.

    Health answers NOT_SERVING while the scorer loads; a failed load exits with code 1.
    """

    async def main() -> int:
        srv = await start_server(scorer, cfg, wait_loaded=False)
        print(f"{scorer.service} reward service listening on {srv.address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stopper = loop.create_task(stop.wait())
        done, _ = await asyncio.wait({srv.load_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if srv.load_task in done and srv.load_task.exception() is not None:
            print(f"{scorer.service} scorer failed to load: {srv.load_task.exception()!r}", flush=True)
            stopper.cancel()
            await srv.stop(0)
            return 1
        if srv.load_task in done:
            print(f"{scorer.service} reward service SERVING on {srv.address}", flush=True)
            await stopper
        print(f"{scorer.service} reward service shutting down (grace {cfg.grace_s} s)", flush=True)
        await srv.stop()
        return 0

    return asyncio.run(main())
