"""Samplers: schedules against the diffusers scheduler, the SDE log-density in float64, solver accuracy
on a Gaussian data distribution whose probability-flow ODE is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from cocoedit.actors.policies.tiny import FLUX_SCHEDULER, QWEN_SCHEDULER
from cocoedit.actors.samplers import (
    calculate_shift,
    dpm2_step,
    euler_step,
    integrate,
    sde_step,
    shifted_sigmas,
)


@pytest.mark.parametrize("config", [FLUX_SCHEDULER, QWEN_SCHEDULER], ids=["flux", "qwen"])
@pytest.mark.parametrize("steps,seq_len", [(2, 16), (10, 64), (10, 1024), (28, 4096)])
def test_shifted_sigmas_match_diffusers_scheduler(config, steps, seq_len):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    mu = calculate_shift(
        seq_len,
        config["base_image_seq_len"],
        config["max_image_seq_len"],
        config["base_shift"],
        config["max_shift"],
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = shifted_sigmas(steps, seq_len, config)
    assert ours.shape == (steps + 1,) and ours[0] == 1 and ours[-1] == 0
    assert torch.allclose(ours, scheduler.sigmas, atol=1e-6)
    assert (ours[1:] < ours[:-1]).all()


def test_one_step_with_a_terminal_stretch_is_refused_not_nan():
    """Qwen-Image's scheduler stretches the sigmas so the last equals shift_terminal: undefined for one
    step at sigma 1 (diffusers' scheduler gives NaN, and every edit and loss with it)."""
    with pytest.raises(ValueError, match=r"num_steps=1 .*shift_terminal=0.02.*num_steps >= 2"):
        shifted_sigmas(1, 1024, QWEN_SCHEDULER)
    assert torch.isfinite(shifted_sigmas(1, 1024, FLUX_SCHEDULER)).all()  # no stretch: one step is fine


def test_calculate_shift_hand_values():
    assert calculate_shift(256) == pytest.approx(0.5)
    assert calculate_shift(4096) == pytest.approx(1.15)
    assert calculate_shift(2176) == pytest.approx(0.825)


def test_euler_and_first_order_dpm2_steps_by_hand():
    x, v = torch.tensor([[[1.0, -2.0]]]), torch.tensor([[[0.5, 1.0]]])
    assert torch.allclose(euler_step(x, v, 0.8, 0.5), torch.tensor([[[0.85, -2.3]]]))
    # First-order DPM-Solver++ == DDIM on x0_hat: x' = (1 - s') x0_hat + s' eps_hat.
    x0_hat = x - 0.8 * v
    eps_hat = x + 0.2 * v
    assert torch.allclose(dpm2_step(x, x0_hat, 0.8, 0.5), 0.5 * x0_hat + 0.5 * eps_hat)
    # From sigma = 1 the step is the flow interpolation, and to sigma = 0 it returns x0_hat.
    assert torch.allclose(dpm2_step(x, x0_hat, 1.0, 0.5), 0.5 * x0_hat + 0.5 * x)
    assert torch.allclose(dpm2_step(x, x0_hat, 0.3, 0.0, x0_hat + 1, 0.5), x0_hat)


def test_sde_log_prob_equals_gaussian_density_in_float64():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    sigma, sigma_next, a = 0.7, 0.45, 0.7
    x_next, log_prob, mean, std = sde_step(x, v, sigma, sigma_next, a, generator=g)
    # Independent float64 computation of the same Gaussian.
    xd, vd, dt = x.double(), v.double(), sigma_next - sigma
    std64 = a * math.sqrt(sigma / (1 - sigma))
    mean64 = xd + (vd + std64**2 / (2 * sigma) * (xd + (1 - sigma) * vd)) * dt
    normal = torch.distributions.Normal(mean64, std64 * math.sqrt(-dt))
    expected = normal.log_prob(x_next.double()).mean(dim=(1, 2))
    assert log_prob.shape == (3,) and log_prob.dtype == torch.float32
    assert torch.allclose(log_prob.double(), expected, atol=1e-5)
    assert torch.allclose(mean.double(), mean64, atol=1e-5)
    assert std.shape == (3, 1, 1) and torch.allclose(std, torch.full((3, 1, 1), std64, dtype=torch.float32))
    # Re-evaluating a stored transition gives the same log-prob; gradients flow into v through the mean.
    v_req = v.clone().requires_grad_(True)
    _, again, _, _ = sde_step(x, v_req, sigma, sigma_next, a, prev_sample=x_next)
    assert torch.allclose(again, log_prob, atol=1e-6)
    again.sum().backward()
    assert v_req.grad is not None and v_req.grad.abs().sum() > 0


def test_sde_step_at_sigma_one_uses_sigma_max_and_validates():
    x, v = torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step(x, v, 1.0, 0.8, 0.7)
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_step(x, v, 0.5, 0.5, 0.7)
    noise = torch.ones(2, 3, 1)
    x_next, _, _, std = sde_step(x, v, 1.0, 0.8, 0.7, noise=noise, sigma_max=0.8)
    assert torch.allclose(std, torch.full((2, 1, 1), 0.7 * math.sqrt(1.0 / 0.2)))
    assert torch.allclose(x_next, std * math.sqrt(0.2) * noise)
    # Per-edit sigmas ([N]) broadcast like scalars.
    _, lp_vec, _, _ = sde_step(x, v, torch.tensor([0.5, 0.5]), torch.tensor([0.3, 0.3]), 0.7, noise=noise)
    _, lp_sc, _, _ = sde_step(x, v, 0.5, 0.3, 0.7, noise=noise)
    assert torch.allclose(lp_vec, lp_sc)


MU, S = 0.3, 0.5  # data ~ N(MU, S^2) per coordinate


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact flow-matching velocity for Gaussian data: v = (x_t - E[x0 | x_t]) / t."""
    t = t.view(-1, *([1] * (x.ndim - 1))).double()
    var = (1 - t) ** 2 * S**2 + t**2
    x0_hat = MU + (1 - t) * S**2 * (x.double() - (1 - t) * MU) / var
    return ((x.double() - x0_hat) / t).float()


def ode_error(sampler: str, steps: int, noise: torch.Tensor) -> float:
    """Max error against the exact ODE solution x0 = MU + S * eps (linear sigmas, no shift)."""
    sigmas = torch.cat([torch.linspace(1, 1 / steps, steps), torch.zeros(1)])
    x0 = integrate(gaussian_velocity, noise, sigmas, sampler).x0
    return (x0.double() - (MU + S * noise.double())).abs().max().item()


def test_dpm2_converges_to_euler_and_to_the_exact_ode_solution():
    noise = torch.randn(4, 8, 3, generator=torch.Generator().manual_seed(0))
    # Both converge, the multistep solver far ahead of Euler, and at second order once the steps are
    # small (linear sigmas are geometric in log-SNR near t = 1, so the order shows from ~40 steps).
    e_dpm = [ode_error("dpm2", n, noise) for n in (10, 40, 80, 160)]
    e_eul = [ode_error("euler", n, noise) for n in (10, 40, 80, 160)]
    assert all(d < e / 5 for d, e in zip(e_dpm, e_eul, strict=True))
    assert e_dpm[1] > e_dpm[2] > e_dpm[3] and e_dpm[2] / e_dpm[3] > 3.0
    assert 1.8 < e_eul[2] / e_eul[3] < 2.2
    sigmas = torch.cat([torch.linspace(1, 1 / 1000, 1000), torch.zeros(1)])
    dpm = integrate(gaussian_velocity, noise, sigmas, "dpm2").x0
    eul = integrate(gaussian_velocity, noise, sigmas, "euler").x0
    assert (dpm - eul).abs().max() < 4e-3


def test_integrate_sde_shapes_and_validation():
    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    sigmas = shifted_sigmas(5, 4, FLUX_SCHEDULER)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    res = integrate(gaussian_velocity, noise, sigmas, "sde", generators=gens)
    assert res.trajectory.shape == (2, 6, 4, 3) and res.log_probs.shape == (2, 5)
    assert torch.equal(res.trajectory[:, 0], noise) and torch.equal(res.trajectory[:, -1], res.x0)
    # Edit 1 alone with the same generator seed: identical (its noise does not depend on edit 0).
    alone = integrate(
        gaussian_velocity, noise[1:], sigmas, "sde", generators=[torch.Generator().manual_seed(2)]
    )
    assert torch.allclose(alone.x0[0], res.x0[1])
    with pytest.raises(ValueError, match="unknown"):
        integrate(gaussian_velocity, noise, sigmas, "heun")
    with pytest.raises(ValueError, match="ending in 0"):
        integrate(gaussian_velocity, noise, sigmas[:-1], "euler")
