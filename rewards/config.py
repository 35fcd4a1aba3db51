"""Configs of the reward side (docs/algorithm.md section 3; docs/architecture.md, Reward services).

Every reward service's section (`rewards.<name>`) is a `ServiceConfig`: whether it runs, its `scaling`
(replicas and what each asks of the cluster) and its gRPC `server`, plus its scorer's own settings.
The registry of services is `cocoedit.rewards.serve.SERVICES`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from cocoedit.ranges import Range

MAX_MESSAGE_MB = (2**31 - 1) // 2**20  # gRPC's message limits are int32 byte counts: 2047 MB


@dataclass(frozen=True)
class ServerConfig:
    """Settings every reward gRPC server shares."""

    host: str = "127.0.0.1"  # "node" = the Ray node's address (replicas other nodes must reach)
    port: Annotated[int, Range(ge=0, le=65535)] = 0  # 0 = pick a free port
    # Largest gRPC message, both directions (larger ones get RESOURCE_EXHAUSTED); gRPC counts message bytes
    # in a signed 32-bit int, so 2047 MB is the most it can take
    max_message_mb: Annotated[int, Range(ge=1, le=MAX_MESSAGE_MB)] = 256
    max_concurrent_calls: Annotated[int, Range(ge=1)] = 8  # further calls get RESOURCE_EXHAUSTED
    max_batch_edits: Annotated[int, Range(ge=1)] = 512  # most edits in one request (more: INVALID_ARGUMENT)
    decode_workers: Annotated[int, Range(ge=1)] = 2  # threads decoding PNGs off the event loop
    grace_s: Annotated[float, Range(ge=0)] = 5.0  # graceful shutdown on SIGTERM
    # Bounded decoding (read from each PNG's header before anything is decoded): an image of more
    # pixels than this is a per-edit error; so is every edit past the request's decoded-bytes budget.
    max_image_pixels: Annotated[int, Range(ge=1)] = 4096 * 4096
    # Decoded-pixel budget of one request; edits past it get a per-edit error
    max_request_decoded_mb: Annotated[int, Range(ge=1)] = 2048
    # A request is decoded and scored in chunks of about this many decoded MB (at least one edit); the
    # next chunk decodes while one is scored, so decoded images take at most ~2 chunks of memory.
    chunk_decoded_mb: Annotated[int, Range(ge=1)] = 64
    # Beyond loopback a server needs TLS (PEM files) and a token (a file, or $COCOEDIT_REWARD_TOKEN) and
    # refuses to start without them unless insecure: true (rewards/security.py; README, Cluster: security).
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None  # the private key of tls_cert_file (PEM)
    token_file: Optional[str] = None  # a file holding the bearer token clients must send
    insecure: bool = False  # serve beyond loopback without TLS and token (a trusted network only)


TOKEN_ENV = "COCOEDIT_REWARD_TOKEN"  # a reward service's bearer token, when no token_file names one


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tls_named(server: ServerConfig, client: ClientConfig, service: str) -> None:
    """At config load: a service bound beyond loopback (`host: node` included) names its TLS files and the
    driver's client names the CA, unless `insecure`. The files live on the nodes and the token may come
    from $COCOEDIT_REWARD_TOKEN: both are checked where they are read (rewards/security.py)."""
    if is_loopback(server.host) or server.insecure:
        return
    missing = [
        f"rewards.{service}.server.{k}" for k in ("tls_cert_file", "tls_key_file") if not getattr(server, k)
    ]
    if not client.tls_ca_file:
        missing.append("rewards.client.tls_ca_file")
    if missing:
        raise ValueError(
            f"rewards.{service}.server.host={server.host} serves beyond loopback, which needs TLS and a "
            f"token: set {', '.join(missing)} (PEM files; README, Cluster: security), or "
            f"rewards.{service}.server.insecure=true on a network you trust"
        )


@dataclass(frozen=True)
class ScalingConfig:
    """How many replicas of one reward service run, and what each asks of the cluster."""

    replicas: Annotated[int, Range(ge=1)] = 1  # at start
    min_replicas: Annotated[int, Range(ge=1)] = 1  # autoscaling bounds
    max_replicas: Annotated[int, Range(ge=1)] = 4  # autoscaling upper bound
    # Autoscaling (cluster/runtime/services.py): after each epoch one replica is added when scoring the epoch
    # took longer than this, one removed when one fewer would still take under half of it. None = fixed.
    target_score_s: Optional[Annotated[float, Range(gt=0)]] = None
    cpus_per_replica: Annotated[float, Range(ge=0)] = 1.0  # CPUs each replica asks for (and its threads)
    # GPUs each replica asks for (the judge: tensor_parallel_size)
    gpus_per_replica: Annotated[float, Range(ge=0)] = 0.0

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas={self.replicas} must lie within min_replicas={self.min_replicas} .. "
                f"max_replicas={self.max_replicas}"
            )


@dataclass(frozen=True)
class ServiceConfig:
    """What every reward service's section has; a service's own section subclasses it."""

    enabled: bool = True  # start this service's replicas in a run (a weighted service must be enabled)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


@dataclass(frozen=True)
class PixelConfig(ServiceConfig):
    """Pixel-consistency reward S_pix on the keep region."""

    # Standard: our masked PSNR/SSIM; release: the released code's numerics
    compat: Literal["standard", "release"] = "standard"
    ssim_weight: Annotated[float, Range(ge=0)] = 0.35  # weight of keep-region SSIM in S_pix
    psnr_weight: Annotated[float, Range(ge=0)] = 0.65  # weight of normalised keep-region PSNR in S_pix
    # PSNR that counts as perfect (normalised PSNR = min(PSNR, cap) / cap)
    psnr_cap_db: Annotated[float, Range(gt=0)] = 40.0
    window: Annotated[int, Range(ge=1)] = 11  # odd
    sigma: Annotated[float, Range(gt=0)] = 1.5  # std of the SSIM Gaussian window (px)
    device: str = "cpu"  # cpu (OpenCV, one edit per thread) or cuda (batched torch)
    # CPU: the edits of a request are scored by this many threads, one edit each, OpenCV single-threaded
    # (0 = one per core); the service sets cv2.setNumThreads(1) in its process when it loads.
    threads: Annotated[int, Range(ge=0)] = 0

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        if self.window % 2 == 0:
            raise ValueError(f"window={self.window} must be odd (the Gaussian window is centred on a pixel)")


@dataclass(frozen=True)
class JudgeConfig(ServiceConfig):
    """The MLLM judge on vLLM (S_mllm)."""

    scaling: ScalingConfig = field(default_factory=lambda: ScalingConfig(gpus_per_replica=1.0))
    model_path: Optional[str] = None  # local HF directory; None in tiny mode = build/cache the tiny judge
    # Logits: expected score from the digit tokens' probabilities; text: parse the answer
    score_mode: Literal["logits", "text"] = "logits"
    temperature: Annotated[float, Range(ge=0, le=2)] = 0.7  # text mode; vLLM accepts [0, 2]
    max_tokens: Annotated[int, Range(ge=1)] = 8  # text mode
    text_retries: Annotated[int, Range(ge=1)] = 3  # text mode: answers asked for before the fallback score
    # Text mode: an edit whose answers still do not parse after text_retries gets this neutral score,
    # marked by its `fallback` component (counted per epoch, bounded by rewards.max_fallback_fraction).
    text_fallback_score: Annotated[float, Range(ge=0, le=1)] = 0.5
    prompt_version: str = "cocoedit-v1"  # the judge prompt (rewards/judge.py PROMPTS), checked at load
    seed: Annotated[int, Range(ge=0)] = 0  # vLLM sampling seed (text mode)
    # VLLM weights dtype; auto = the checkpoint's
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # VLLM context length in tokens (two images + prompt ~800 at 512 px)
    max_model_len: Annotated[int, Range(ge=1)] = 4096
    images_per_prompt: Annotated[int, Range(ge=2)] = 2  # the judge sees [source, edited]
    # On CPU vLLM reserves HOST memory with this: keep it small there (~0.1).
    gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.85
    tensor_parallel_size: Annotated[int, Range(ge=1)] = 1  # GPUs one judge replica spans
    # Resized to this before the judge sees them; 28 = one merged patch
    image_size: Annotated[int, Range(ge=28)] = 512
    # Logits mode: top-k log-probabilities, room for the digits 0-5
    logprobs_k: Annotated[int, Range(ge=6)] = 20
    # Per engine request; past it the call fails (INTERNAL), never hangs.
    generate_timeout_s: Annotated[float, Range(gt=0)] = 120.0
    enforce_eager: Optional[bool] = None  # None = True on CPU (no graphs/compile there), False on GPU
    tiny_judge_dir: str = "~/.cache/cocoedit/tiny_judge"  # where model_path=None builds the tiny judge

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        from cocoedit.rewards.judge import PROMPTS  # prompt texts only: no torch, no vLLM

        if self.prompt_version not in PROMPTS:
            raise ValueError(
                f"prompt_version={self.prompt_version!r} is unknown; known versions: {sorted(PROMPTS)}"
            )


@dataclass(frozen=True)
class SyntheticJudgeConfig(ServiceConfig):
    """Exact instruction-following score for the synthetic task (known target)."""

    enabled: bool = False  # start the synthetic judge (it needs the synthetic task's known targets)
    scaling: ScalingConfig = field(default_factory=lambda: ScalingConfig(cpus_per_replica=0.5))


@dataclass(frozen=True)
class ClientConfig:
    timeout_s: Annotated[float, Range(gt=0)] = 60.0  # deadline of every call
    retries: Annotated[int, Range(ge=0)] = 4  # on UNAVAILABLE / RESOURCE_EXHAUSTED only
    backoff_s: Annotated[float, Range(ge=0)] = 0.2  # first backoff, doubled per retry
    ready_timeout_s: Annotated[float, Range(gt=0)] = 300.0  # wait for health SERVING at start-up
    batch_edits: Annotated[int, Range(ge=1)] = 64  # edits per request
    # send/receive limit of the client channels (a 1024x1024 pair is ~6 MB; at most 2047, gRPC's int32)
    max_message_mb: Annotated[int, Range(ge=1, le=MAX_MESSAGE_MB)] = 256
    # The CA that signed the services' certificates (TLS) and the services' token (a file, or
    # $COCOEDIT_REWARD_TOKEN): needed for services bound beyond loopback (rewards/security.py).
    tls_ca_file: Optional[str] = None
    token_file: Optional[str] = None  # the bearer token sent to services bound beyond loopback
