"""Learner benchmarks. Prints numbers and ratios; asserts nothing.

    python bench/learner_update.py                  # s/update, DeepSpeed engine vs a plain torch AdamW loop (tiny, CPU)
    python bench/learner_update.py regularizer      # keep-region error of the positive branch, lam_pos > 0 vs 0
    python bench/learner_update.py bf16             # bf16 base, ZeRO-0 and -2: one small Adam step and the soft
                                             # update of theta_old against float64 (errors in float32 ulps)
    python bench/learner_update.py gpu              # full-size FLUX.1-Kontext transformer, random bf16 weights,
                                             # LoRA r=32: fwd+bwd s/sample at 512x512 and MFU (needs CUDA)

`engine` mode: both learners run the SAME passes (the Learner's own forward/loss code); only the
optimisation machinery differs (DeepSpeed ZeRO engine with gloo vs torch.optim.AdamW + clip_grad_norm_),
interleaved so machine load hits both alike. Target: ratio within 1.15x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocoedit.learner.learner import Learner  # noqa: E402
from cocoedit.loopback import apply_loopback_env  # noqa: E402
from tests.learner import common  # noqa: E402


class TorchEngine:
    """The slice of DeepSpeedEngine the Learner uses, as a plain torch AdamW loop (the baseline)."""

    def __init__(
        self, params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float], wd: float, clip: float
    ):
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=wd)
        self.clip = clip
        self.global_steps = 0
        self._norm = 0.0

    def train(self) -> None:
        pass

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = False) -> None:
        loss.backward()

    def step(self) -> None:
        self._norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.global_steps += 1

    def get_global_grad_norm(self) -> float:
        return self._norm

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.opt.param_groups]


class TorchLearner(Learner):
    def _build_engine(self) -> Any:
        c = self.cfg
        return TorchEngine(self.policy.trainable_parameters(), c.lr, c.betas, c.weight_decay, c.grad_clip)


def bench_engine(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model_dir = common.build_model(tempfile.mkdtemp(prefix="bench_learner_"))
    cfg = common.learner_config(
        train_timesteps=args.timesteps, micro_batch_size=args.micro_batch, zero_stage=args.zero_stage
    )
    runs: dict[str, Learner] = {}
    for name, cls in (("deepspeed", Learner), ("torch", TorchLearner)):
        policy = common.load(model_dir)
        runs[name] = cls(policy.cfg, cfg, policy=policy)  # type: ignore[attr-defined]
    batch = common.make_batch(runs["torch"].policy, n=args.edits, num_steps=10)
    adv = torch.linspace(-1.5, 1.5, args.edits)
    valid = torch.ones(args.edits, dtype=torch.bool)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.updates + 1):
        for name, learner in runs.items():
            t0 = time.perf_counter()
            learner.update(batch, adv, valid)
            if i > 0:  # the first update of each pays one-time costs
                times[name].append(time.perf_counter() - t0)
    ds, pt = statistics.median(times["deepspeed"]), statistics.median(times["torch"])
    diff = common.lora_max_diff(
        runs["deepspeed"].policy.lora_state_dict("default"), runs["torch"].policy.lora_state_dict("default")
    )
    passes = -(-args.edits // args.micro_batch) * args.timesteps
    print(
        f"tiny FLUX-Kontext, {args.edits} edits x {args.timesteps} timesteps, micro-batch {args.micro_batch}"
    )
    print(
        f"  ({passes} forward/backward passes per update), ZeRO-{args.zero_stage}, {args.updates} timed updates each"
    )
    print(f"deepspeed engine : {ds:.3f} s/update (median; min {min(times['deepspeed']):.3f})")
    print(f"plain torch AdamW: {pt:.3f} s/update (median; min {min(times['torch']):.3f})")
    print(f"ratio deepspeed / torch: {ds / pt:.3f}x (target <= 1.15x)")
    print(f"max |LoRA difference| after {args.updates + 1} updates: {diff:.2e} (same maths, same data)")


def bench_regularizer(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model_dir = common.build_model(tempfile.mkdtemp(prefix="bench_reg_"))
    g = torch.Generator().manual_seed(7)
    rows = []
    probes: list[tuple[float, torch.Tensor]] = []
    for lam in args.lams:
        policy = common.load(model_dir)
        cfg = common.learner_config(
            lam_pos=lam,
            lam_neg=0.0,
            lr=args.lr,
            train_timesteps=args.timesteps,
            micro_batch_size=args.micro_batch,
        )
        learner = Learner(policy.cfg, cfg, policy=policy)  # type: ignore[attr-defined]
        batch = common.make_batch(policy, n=args.edits, num_steps=10)
        if not probes:
            probes = [(t, torch.randn(batch.x0.shape, generator=g)) for t in (0.3, 0.6, 0.9)]
        adv = torch.tensor([1.0, -1.0] * (args.edits // 2))  # fixed synthetic rewards: half good, half bad
        valid = torch.ones(args.edits, dtype=torch.bool)
        e0 = common.keep_error(learner.policy, batch, probes)
        curve = [e0]
        for u in range(args.updates):
            learner.update(batch, adv, valid)
            if (u + 1) % max(1, args.updates // 4) == 0:
                curve.append(common.keep_error(learner.policy, batch, probes))
        rows.append((lam, curve))
        print(
            f"lam_pos={lam:<5g} keep-region error d_pos: "
            + " -> ".join(f"{e:.5f}" for e in curve)
            + f"   (drop {100 * (1 - curve[-1] / curve[0]):.2f}%)",
            flush=True,
        )
    base = rows[0][1]
    for lam, curve in rows[1:]:
        print(
            f"lam_pos={lam:g} vs {rows[0][0]:g}: final keep error ratio {curve[-1] / base[-1]:.4f}, "
            f"drop {(base[-1] - curve[-1]) / base[0] * 100:+.2f}% of the start value more"
        )


def bench_bf16(args: argparse.Namespace) -> None:
    """A tiny FLUX-Kontext with a bf16 base, LoRA weights ~N(0, 0.3^2): one AdamW step of lr (each weight
    moves by ~lr), then theta_old <- d theta_old + (1 - d) theta, each against the float64 result from
    the same inputs (the step from the optimizer's own moments). Reports the worst error as a fraction
    of the step / of the soft update's change, and the weights that did not move at all."""
    from deepspeed.utils import safe_get_full_optimizer_state

    torch.set_num_threads(args.threads)
    model_dir = common.build_model(tempfile.mkdtemp(prefix="bench_bf16_"))
    for stage in (0, 2):
        for lr, d in ((1e-5, 0.5), (1e-3, 0.5), (1e-3, 0.999)):
            policy = common.load(model_dir, dtype="bfloat16")
            g = torch.Generator().manual_seed(0)
            start = {
                k: 0.3 * torch.randn(v.shape, generator=g)
                for k, v in policy.lora_state_dict("default").items()
            }
            policy.load_lora_state_dict(start, "default")
            policy.load_lora_state_dict(start, "old")
            cfg = common.learner_config(
                zero_stage=stage, lr=lr, ema_rate=d, ema_max=d, train_timesteps=1, micro_batch_size=4
            )
            learner = Learner(policy.cfg, cfg, policy=policy)  # type: ignore[attr-defined]
            batch = common.make_batch(policy)
            theta0 = {k: v.double() for k, v in policy.lora_state_dict("default").items()}
            learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool))
            theta1 = {k: v.double() for k, v in policy.lora_state_dict("default").items()}
            old1 = {k: v.double() for k, v in policy.lora_state_dict("old").items()}
            b1, b2 = cfg.betas
            err, step, frozen, n = 0.0, 0.0, 0, 0
            for (k, t0), p in zip(theta0.items(), policy.trainable_parameters(), strict=True):
                moments = []
                for key in ("exp_avg", "exp_avg_sq"):
                    state = safe_get_full_optimizer_state(p, key)
                    state = learner.engine.optimizer.state[p][key] if state is None else state
                    moments.append(state.detach().double().cpu().view(t0.shape))
                upd = lr * (moments[0] / (1 - b1)) / ((moments[1] / (1 - b2)).sqrt() + 1e-8)
                expected = t0 * (1 - lr * cfg.weight_decay) - upd
                err, step = (
                    max(err, (theta1[k] - expected).abs().max().item()),
                    max(step, upd.abs().max().item()),
                )
                frozen, n = frozen + int((theta1[k] == t0).sum()), n + t0.numel()
            blend = {k: d * theta0[k] + (1 - d) * theta1[k] for k in theta0}  # theta_old started at theta0
            change = max((blend[k] - theta0[k]).abs().max().item() for k in blend)
            err_old = max((old1[k] - blend[k]).abs().max().item() for k in blend)
            stuck = sum(int(((old1[k] == theta0[k]) & (blend[k] != theta0[k])).sum()) for k in blend)
            print(
                f"ZeRO-{stage} lr={lr:g} d={d}: theta error {err / step:.2g} of the step ({frozen}/{n} weights "
                f"unmoved); theta_old error {err_old / change:.2g} of its change ({stuck}/{n} unmoved)",
                flush=True,
            )


TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "context_embedder")


def linear_flops(model: torch.nn.Module, n_image: int, n_text: int) -> int:
    """Forward matmul FLOPs (2 per MAC) of a FLUX transformer's base Linear layers for one sample:
    image-stream layers see the n_image tokens, text-stream layers the n_text tokens, single blocks
    both; AdaLN modulation and the time/guidance embedders act once per sample (ignored), LoRA too."""
    total = 0
    for name, m in model.named_modules():
        if (
            not isinstance(m, torch.nn.Linear)
            or "lora_" in name
            or "norm" in name
            or "time_text_embed" in name
        ):
            continue
        if name.startswith("single_transformer_blocks."):
            tokens = n_image + n_text
        elif any(t in name for t in TEXT_STREAM):
            tokens = n_text
        else:
            tokens = n_image
        total += 2 * m.in_features * m.out_features * tokens
    return total


def bench_gpu(args: argparse.Namespace) -> None:
    """Full-size FLUX.1-Kontext transformer (12B config), random bf16 weights, peft LoRA r=32 on the
    attention projections; forward + backward of the `default` LoRA at 512x512 (1024 target + 1024 source
    tokens, 512 text tokens). MFU = achieved / peak bf16 FLOP/s."""
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from cocoedit.actors.config import LORA_TARGETS
    from cocoedit.actors.policies.lora import lora_target_modules

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench gpu needs a CUDA device (or --device cpu --small for a smoke run)")
    from cocoedit.actors.policies.builders import real_spec

    full = dict(real_spec("flux_kontext").transformer)  # the published FLUX.1-Kontext-dev transformer
    if args.small:  # a smoke test of this code path on CPU
        full.update(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            axes_dims_rope=(4, 6, 6),
        )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = FluxTransformer2DModel(**full)
    torch.set_default_dtype(prev)
    model.requires_grad_(False)
    lcfg = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        init_lora_weights="gaussian",
        target_modules=lora_target_modules(model, LORA_TARGETS),
    )
    model.add_adapter(lcfg, adapter_name="default")
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    n_base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"built in {time.perf_counter() - t0:.1f} s: {n_base / 1e9:.2f} B frozen, {n_lora / 1e6:.1f} M LoRA params"
    )

    side = args.resolution // 16  # VAE /8, then 2x2 packing
    l_img, l_txt, b = side * side, args.text_len, args.batch
    d_model = full["num_attention_heads"] * full["attention_head_dim"]

    def inputs() -> dict[str, torch.Tensor]:
        ids = torch.zeros(side, side, 3)
        ids[..., 1] = torch.arange(side)[:, None]
        ids[..., 2] = torch.arange(side)[None, :]
        ids = ids.reshape(-1, 3)
        src_ids = ids.clone()
        src_ids[:, 0] = 1
        return dict(
            hidden_states=torch.randn(b, 2 * l_img, full["in_channels"], device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(
                b, l_txt, full["joint_attention_dim"], device=device, dtype=dtype
            ),
            pooled_projections=torch.randn(b, full["pooled_projection_dim"], device=device, dtype=dtype),
            timestep=torch.rand(b, device=device, dtype=dtype),
            guidance=torch.full((b,), 2.5, device=device, dtype=torch.float32),
            img_ids=torch.cat([ids, src_ids]).to(device, dtype),
            txt_ids=torch.zeros(l_txt, 3, device=device, dtype=dtype),
        )

    def fwd_bwd() -> None:
        x = inputs()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(**x, return_dict=False)[0][:, :l_img]
        out.float().pow(2).mean().backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        fwd_bwd()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        fwd_bwd()
    sync()
    dt = (time.perf_counter() - t0) / args.iters
    seq = 2 * l_img + l_txt
    layers = full["num_layers"] + full["num_single_layers"]
    fwd = b * (linear_flops(model, 2 * l_img, l_txt) + 4 * seq * seq * d_model * layers)
    # frozen base: backward needs input gradients only (~1x forward); checkpointing re-runs the forward
    total = fwd * (2 + (1 if args.checkpointing else 0))
    achieved = total / dt
    print(
        f"{args.resolution}x{args.resolution}, batch {b}, sequence {seq} tokens, LoRA r={args.rank}, "
        f"gradient checkpointing {args.checkpointing}"
    )
    print(f"forward+backward: {dt:.3f} s/step, {dt / b:.3f} s/sample")
    print(
        f"model FLOPs/step {total / 1e12:.1f} TFLOP -> {achieved / 1e12:.1f} TFLOP/s; "
        f"MFU {100 * achieved / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:g} TFLOP/s peak bf16"
    )
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    apply_loopback_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="engine", choices=["engine", "regularizer", "bf16", "gpu"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--edits", type=int, default=8)
    p.add_argument("--timesteps", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="regularizer mode")
    p.add_argument(
        "--lams", type=float, nargs="+", default=[0.0, 0.8, 5.0], help="regularizer mode: lam_pos values"
    )
    p.add_argument("--device", default="cuda", help="gpu mode")
    p.add_argument("--small", action="store_true", help="gpu mode: tiny config (smoke test on CPU)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    args = p.parse_args()
    modes = {"engine": bench_engine, "regularizer": bench_regularizer, "bf16": bench_bf16, "gpu": bench_gpu}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
