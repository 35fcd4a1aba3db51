"""Configs of the reward side (ALGORITHM.md section 3; DESIGN.md, Reward services)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from cocoedit.ranges import Range


@dataclass(frozen=True)
class ServerConfig:
    """Settings every reward gRPC server shares."""

    host: str = "127.0.0.1"  # "node" = the Ray node's address (replicas other nodes must reach)
    port: int = 0  # 0 = pick a free port
    max_message_mb: int = 256
    max_concurrent_calls: int = 8  # further calls get RESOURCE_EXHAUSTED
    max_batch_edits: int = 512
    decode_workers: int = 2  # threads decoding PNGs off the event loop
    grace_s: float = 5.0  # graceful shutdown on SIGTERM
    # Bounded decoding (read from each PNG's header before anything is decoded): an image of more
    # pixels than this is a per-edit error; so is every edit past the request's decoded-bytes budget.
    max_image_pixels: Annotated[int, Range(ge=1)] = 4096 * 4096
    max_request_decoded_mb: Annotated[int, Range(ge=1)] = 2048
    # A request is decoded and scored in chunks of about this many decoded MB (at least one edit); the
    # next chunk decodes while one is scored, so decoded images take at most ~2 chunks of memory.
    chunk_decoded_mb: Annotated[int, Range(ge=1)] = 64


@dataclass(frozen=True)
class PixelConfig:
    """Pixel-consistency reward S_pix on the keep region."""

    compat: Literal["standard", "release"] = "standard"
    ssim_weight: float = 0.35
    psnr_weight: float = 0.65
    psnr_cap_db: float = 40.0
    window: int = 11
    sigma: float = 1.5
    device: str = "cpu"
    # CPU: the edits of a request are scored by this many threads, one edit each, OpenCV single-threaded
    # (0 = one per core); the service sets cv2.setNumThreads(1) in its process when it loads.
    threads: int = 0
    replicas: int = 1  # at start
    min_replicas: int = 1  # autoscaling bounds
    max_replicas: int = 4
    # Autoscaling (cluster/services.py): after each epoch one replica is added when scoring the epoch
    # took longer than this, one removed when one fewer would still take under half of it. None = fixed.
    target_score_s: Optional[float] = None
    cpus_per_replica: float = 1.0
    server: ServerConfig = field(default_factory=ServerConfig)


@dataclass(frozen=True)
class JudgeConfig:
    """The MLLM judge on vLLM (S_mllm)."""

    enabled: bool = True
    model_path: Optional[str] = None  # local HF directory; None in tiny mode = build/cache the tiny judge
    score_mode: Literal["logits", "text"] = "logits"
    temperature: float = 0.7  # text mode
    max_tokens: int = 8  # text mode
    text_retries: int = 3
    prompt_version: str = "cocoedit-v1"
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = 4096
    images_per_prompt: int = 2
    gpu_memory_utilization: float = 0.85  # on CPU vLLM reserves HOST memory with this: keep it small there
    tensor_parallel_size: int = 1
    image_size: int = 512  # images are resized to this before the judge sees them
    logprobs_k: int = 20  # logits mode: top-k log-probabilities of the first answer token
    generate_timeout_s: float = 120.0  # per engine request; past it the call fails (INTERNAL), never hangs
    enforce_eager: Optional[bool] = None  # None = True on CPU (no graphs/compile there), False on GPU
    tiny_judge_dir: str = "~/.cache/cocoedit/tiny_judge"  # where model_path=None builds the tiny judge
    replicas: int = 1  # at start
    min_replicas: int = 1  # autoscaling bounds
    max_replicas: int = 4
    target_score_s: Optional[float] = None  # see PixelConfig
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    server: ServerConfig = field(default_factory=ServerConfig)


@dataclass(frozen=True)
class SyntheticJudgeConfig:
    """Exact instruction-following score for the synthetic task (known target)."""

    enabled: bool = False
    replicas: int = 1  # at start
    min_replicas: int = 1  # autoscaling bounds
    max_replicas: int = 4
    target_score_s: Optional[float] = None  # see PixelConfig
    cpus_per_replica: float = 0.5
    server: ServerConfig = field(default_factory=ServerConfig)


@dataclass(frozen=True)
class ClientConfig:
    timeout_s: float = 60.0  # deadline of every call
    retries: int = 4  # on UNAVAILABLE / RESOURCE_EXHAUSTED only
    backoff_s: float = 0.2  # first backoff, doubled per retry
    ready_timeout_s: float = 300.0  # wait for health SERVING at start-up
    batch_edits: int = 64  # edits per request
    max_message_mb: int = 256  # send/receive limit of the client channels (a 1024x1024 pair is ~6 MB)


@dataclass(frozen=True)
class RewardsConfig:
    # R = sum_k weights[k] * S_k; names are the services' score names (mllm, pixel, synthetic).
    weights: dict[str, float] = field(default_factory=lambda: {"mllm": 0.9, "pixel": 0.1})
    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # external services by name
    pixel: PixelConfig = field(default_factory=PixelConfig)
    mllm: JudgeConfig = field(default_factory=JudgeConfig)
    synthetic: SyntheticJudgeConfig = field(default_factory=SyntheticJudgeConfig)
    client: ClientConfig = field(default_factory=ClientConfig)

    def service(self, name: str) -> PixelConfig | JudgeConfig | SyntheticJudgeConfig:
        """The config section of reward service `name` (its scorer settings, replicas and resources)."""
        if name not in SERVICES:
            raise ValueError(f"unknown reward service {name!r}; known: {list(SERVICES)}")
        return getattr(self, name)


# The reward services this project runs itself (sections of RewardsConfig, scorers in rewards/serve.py).
SERVICES = ("pixel", "mllm", "synthetic")
