"""Flow-matching samplers for rollouts (docs/algorithm.md sections 2 and 7). Pure torch.

Flow time t in (0, 1] (1 = noise), x_t = (1 - t) x0 + t eps, velocity v = eps - x0, x0_hat = x_t - t v.
Shapes: N edits, L packed tokens, D packed channels, T steps. Latents are float32 [N, L, D].

- `shifted_sigmas`: `linspace(1, 1/T, T)` through the scheduler's resolution-dependent shift (as the
  diffusers FLUX / Qwen-Image pipelines do for the image sequence length), then a final 0: [T + 1].
- `euler`: the ODE step of FlowMatchEulerDiscreteScheduler (reproduces the stock pipelines).
- `dpm2`: deterministic 2nd-order multistep DPM-Solver++ on the x0-prediction (CoCoEdit's rollout sampler).
- `sde`: the Flow-GRPO SDE step with its Gaussian log-probability (`sde_step`, also used by the learner).
- `initial_noise`: x_1 of one edit, drawn as the diffusers pipelines draw it (rollout and evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

SAMPLERS = ("dpm2", "euler", "sde")
Sampler = Literal["dpm2", "euler", "sde"]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [N, L, D], t [N]) -> v [N, L, D]


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu of the resolution-dependent shift: linear in the image token count (diffusers calculate_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def initial_noise(policy: Any, generator: torch.Generator, height: int, width: int) -> torch.Tensor:
    """x_1 of one edit: [L, D] float32 packed, drawn from `generator` (CPU, seeded per edit) on the VAE
    latent grid [1, C, h, w] and then packed, as the diffusers pipelines draw it for batch size 1, so a
    seed gives the stock pipeline's edit and an edit does not depend on its batch-mates."""
    channels, h, w = policy.latent_grid(height, width)
    grid = torch.randn((1, channels, h, w), generator=generator, dtype=torch.float32)
    return policy.pack(grid)[0]


def shifted_sigmas(num_steps: int, image_seq_len: int, scheduler_config: dict[str, Any]) -> torch.Tensor:
    """The sigma schedule [T + 1] (1 ... 0) of a FlowMatchEulerDiscreteScheduler config for an image of
    `image_seq_len` packed tokens, as `pipeline(num_inference_steps=T)` sets it. float32."""
    if num_steps < 1:
        raise ValueError(f"rollout.num_steps={num_steps} must be >= 1")
    cfg = scheduler_config
    for unsupported in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
        if cfg.get(unsupported):
            raise ValueError(f"scheduler option {unsupported}=True is not supported by actors.samplers")
    s = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    if cfg.get("use_dynamic_shifting", False):
        mu = calculate_shift(
            image_seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        if cfg.get("time_shift_type", "exponential") == "exponential":
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
        else:
            s = mu / (mu + (1 / s - 1))
    else:
        shift = cfg.get("shift", 1.0)
        s = shift * s / (1 + (shift - 1) * s)
    terminal = cfg.get("shift_terminal")
    if terminal:
        if num_steps == 1:  # the stretch maps the last sigma to the terminal: 0 / 0 for one step at 1.0
            raise ValueError(
                f"rollout.num_steps=1 with a scheduler that stretches its sigmas to shift_terminal={terminal} "
                "(Qwen-Image-Edit) is undefined (the stock scheduler returns NaN): use num_steps >= 2"
            )
        one_minus = 1 - s
        s = 1 - one_minus / (one_minus[-1] / (1 - terminal))
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x_{t'} = x_t + (t' - t) v, in float32 as the diffusers scheduler computes it. [N, L, D]."""
    return (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)


def dpm2_step(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    sigma: float,
    sigma_next: float,
    prev_x0_hat: Optional[torch.Tensor] = None,
    sigma_prev: Optional[float] = None,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step on the data prediction (alpha_t = 1 - t, sigma_t = t). [N, L, D].

    First order (DDIM on x0_hat) when there is no previous prediction, when this or the previous
    step starts at sigma = 1 (lambda = -inf, the 2nd-order weight is 0) and for the last step to 0.
    """
    alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
    d = x0_hat
    if prev_x0_hat is not None and sigma_prev is not None and sigma_prev < 1.0 and sigma_next > 0.0:
        lam = math.log(alpha / sigma)
        h = math.log(alpha_next / sigma_next) - lam
        h_prev = lam - math.log((1.0 - sigma_prev) / sigma_prev)
        r = h_prev / h
        d = x0_hat + (x0_hat - prev_x0_hat) / (2.0 * r)
    # (sigma'/sigma) x + alpha' (1 - e^{-h}) D, with e^{-h} = alpha sigma' / (sigma alpha').
    return (sigma_next / sigma) * x + (alpha_next - alpha * sigma_next / sigma) * d


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    prev_sample: Optional[torch.Tensor] = None,
    sigma_max: Optional[torch.Tensor | float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow-GRPO SDE step from sigma to sigma_next < sigma, with the log-probability of the result.

    x, v: [N, L, D]; sigma, sigma_next: scalars or [N]; sigma_max: the schedule's sigmas[1], used in
    place of sigma in the std when sigma == 1 (where sigma / (1 - sigma) is infinite).
    std = a sqrt(sigma / (1 - sigma~)); mean = x + [v + std^2 / (2 sigma) (x + (1 - sigma) v)] dt;
    x' = mean + std sqrt(-dt) xi, with xi from `noise` or drawn with `generator`; if `prev_sample` is
    given it is used as x' (re-evaluating a stored transition; it is detached).
    Returns (x' [N, L, D], log_prob [N] = mean over L, D of the Gaussian log-density, mean, std [N, 1, 1]);
    all computed in float32.
    """
    xf, vf = x.float(), v.float()
    n = x.shape[0]
    shape = (n,) + (1,) * (x.ndim - 1)
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(n).reshape(shape)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device).expand(n).reshape(shape)
    if bool((s == 1).any()):
        if sigma_max is None:
            raise ValueError("sde_step at sigma = 1 needs sigma_max (the schedule's sigmas[1])")
        s_max = torch.as_tensor(sigma_max, dtype=torch.float32, device=x.device)
        s_tilde = torch.where(s == 1, s_max, s)
    else:
        s_tilde = s
    dt = s_next - s
    if bool((dt >= 0).any()):
        raise ValueError("sde_step needs sigma_next < sigma (time runs from noise to data)")
    std = noise_level * torch.sqrt(s / (1 - s_tilde))
    mean = xf + (vf + std**2 / (2 * s) * (xf + (1 - s) * vf)) * dt
    scale = std * torch.sqrt(-dt)
    if prev_sample is not None:
        x_next = prev_sample.detach().float()
    else:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x_next = mean + scale * noise.float()
    log_prob = (
        -((x_next.detach() - mean) ** 2) / (2 * scale**2)
        - torch.log(scale)
        - math.log(math.sqrt(2 * math.pi))
    )
    return x_next, log_prob.mean(dim=tuple(range(1, x.ndim))), mean, std


@dataclass
class SampleResult:
    x0: torch.Tensor  # [N, L, D] float32 final clean latents
    trajectory: Optional[torch.Tensor] = None  # [N, T + 1, L, D] (sde only): x at every sigma
    log_probs: Optional[torch.Tensor] = None  # [N, T] (sde only): log p of each transition


def integrate(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: Sampler,
    noise_level: float = 0.7,
    generators: Optional[list[torch.Generator]] = None,
) -> SampleResult:
    """Run `sampler` from x_1 = noise [N, L, D] through sigmas [T + 1] (1 ... 0) with `velocity`.

    `generators` (sde): one per edit, so an edit's SDE noise does not depend on its batch-mates.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"rollout.sampler={sampler!r} is unknown; expected one of {SAMPLERS}")
    if sigmas.ndim != 1 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must be a 1-D schedule ending in 0 (see shifted_sigmas)")
    n = noise.shape[0]
    s = [float(v) for v in sigmas.to(torch.float32)]
    x = noise.float()
    steps = len(s) - 1
    traj = [x] if sampler == "sde" else None
    log_probs = []
    prev_x0, prev_sigma = None, None
    for i in range(steps):
        t = torch.full((n,), s[i], dtype=torch.float32, device=x.device)
        v = velocity(x, t).float()
        if sampler == "euler":
            x = euler_step(x, v, s[i], s[i + 1])
        elif sampler == "dpm2":
            x0_hat = x - s[i] * v
            x = dpm2_step(x, x0_hat, s[i], s[i + 1], prev_x0, prev_sigma)
            prev_x0, prev_sigma = x0_hat, s[i]
        else:
            xi = None
            if generators is not None:
                if len(generators) != n:
                    raise ValueError(f"{len(generators)} generators for {n} edits")
                xi = torch.stack(
                    [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generators]
                ).to(x.device)
            x, lp, _, _ = sde_step(x, v, s[i], s[i + 1], noise_level, noise=xi, sigma_max=s[1])
            assert traj is not None  # sampler == "sde" (checked against SAMPLERS above)
            traj.append(x)
            log_probs.append(lp)
    if traj is not None:  # sampler == "sde"
        return SampleResult(x, torch.stack(traj, dim=1), torch.stack(log_probs, dim=1))
    return SampleResult(x)


@torch.no_grad()
def sample(
    policy: Any,
    condition: Any,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: Sampler,
    noise_level: float = 0.7,
    generators: Optional[list[torch.Generator]] = None,
) -> SampleResult:
    """Sample a batch of edits with `policy` (its currently active adapter) under `condition` (batched
    like noise [N, L, D]); see `integrate`."""
    return integrate(
        lambda x, t: policy.velocity(x, t, condition), noise, sigmas, sampler, noise_level, generators
    )
