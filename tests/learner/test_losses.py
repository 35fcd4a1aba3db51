"""Invariants of the NFT loss, the region regularizer, the KL and Flow-GRPO on hand-built tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cocoedit.learner.config import LearnerConfig
from cocoedit.learner.losses import (
    RegionWeights,
    erode,
    grpo_loss,
    nft_branches,
    nft_objective,
    nft_policy_loss,
    region_regularizer,
    region_weights,
    weighted_sq_dist,
)


def test_branches_beta_one() -> None:
    x_t, v, v_old = torch.randn(3, 2, 4, 5).unbind(0)
    t = torch.tensor([0.3, 0.8])
    x0_pos, x0_neg = nft_branches(x_t, t, v, v_old, beta=1.0)
    te = t.view(-1, 1, 1)
    torch.testing.assert_close(x0_pos, x_t - te * v)
    torch.testing.assert_close(x0_neg, x_t - te * (2 * v_old - v))


def test_policy_gradient_vanishes_at_theta_old_and_r_half() -> None:
    """A real (tiny) velocity model: with theta = theta_old and r = 0.5 the two branches cancel."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    x0 = torch.randn(4, 5, 6, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * torch.randn_like(x0)
    v = net(x_t)
    v_old = v.detach().clone()
    r = torch.full((4,), 0.5, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    x0_pos, x0_neg = nft_branches(x_t, t, v, v_old)
    loss, _ = nft_policy_loss(x0_pos, x0_neg, x0, r, valid)
    assert loss.item() > 0
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-12
    # ... and it does not vanish for r != 0.5
    loss2, _ = nft_policy_loss(*nft_branches(x_t, t, net(x_t), v_old), x0, torch.full_like(r, 0.9), valid)
    grads2 = torch.autograd.grad(loss2, list(net.parameters()))
    assert max(g.abs().max().item() for g in grads2) > 1e-4


def test_policy_loss_value_and_validity() -> None:
    x0 = torch.zeros(2, 1, 2)
    x0_pos = torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])  # mean sq 5, mean abs 2 -> 2.5 ; 4/2 = 2
    x0_neg = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # 2/1 = 2 ; 0 / 1e-5 = 0
    r = torch.tensor([0.75, 0.5])
    loss, m = nft_policy_loss(x0_pos, x0_neg, x0, r, torch.tensor([True, True]), scale=5.0)
    per = torch.tensor([0.75 * 2.5 + 0.25 * 2.0, 0.5 * 2.0 + 0.5 * 0.0])
    assert loss.item() == pytest.approx(5 * per.mean().item())
    loss1, _ = nft_policy_loss(x0_pos, x0_neg, x0, r, torch.tensor([True, False]), scale=5.0)
    assert loss1.item() == pytest.approx(5 * per[0].item())
    loss0, _ = nft_policy_loss(x0_pos, x0_neg, x0, r, torch.tensor([False, False]))
    assert loss0.item() == 0.0


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_ring_empty_for_uniform_masks(fill: float) -> None:
    w = region_weights(torch.full((2, 1, 32, 32), fill), (8, 8), erode_radius=2, ring_weight=0.2)
    assert w.ring.abs().max().item() == 0.0
    assert torch.equal(w.keep, torch.full_like(w.keep, 1.0 - fill))
    assert torch.equal(w.edit, torch.full_like(w.edit, fill))


def test_region_weights_geometry() -> None:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0  # edit square -> latent grid 16x16: rows 4..11
    w = region_weights(mask, (16, 16), erode_radius=2, ring_weight=0.2)
    keep = 1.0 - torch.nn.functional.interpolate(mask, size=(16, 16), mode="nearest")
    assert keep[0, 0, 4:12, 4:12].sum() == 0 and keep.sum() == 256 - 64
    # erosion by 2 removes a 2-cell band on each side of the boundary
    assert w.edit[0, 0].sum().item() == 4 * 4  # rows 6..9
    assert w.edit[0, 0, 6:10, 6:10].min().item() == 1.0
    assert w.keep[0, 0, 2:14, 2:14].sum().item() == 0.0 and w.keep[0, 0, 0:2].min().item() == 1.0
    assert w.ring.sum().item() == 12 * 12 - 4 * 4
    torch.testing.assert_close(w.w_pos, (w.keep + 0.2 * w.ring).clamp(0, 1))
    torch.testing.assert_close(w.w_neg, (w.edit + 0.2 * w.ring).clamp(0, 1))
    # erosion is the soft formula 1 - maxpool(1 - m)
    m = torch.rand(1, 1, 9, 9)
    expected = 1 - torch.nn.functional.max_pool2d(1 - m, 5, stride=1, padding=2)
    torch.testing.assert_close(erode(m, 2), expected)


def test_soft_mask_kept_unless_binarized() -> None:
    mask = torch.full((1, 1, 8, 8), 0.3)
    assert region_weights(mask, (4, 4), erode_radius=0).keep.unique().tolist() == pytest.approx([0.7])
    assert region_weights(mask, (4, 4), erode_radius=0, binarize=True).keep.unique().tolist() == [1.0]


def _uniform_weights(n: int, h: int, w: int) -> RegionWeights:
    ones, zeros = torch.ones(n, 1, h, w), torch.zeros(n, 1, h, w)
    return RegionWeights(keep=ones, edit=ones, ring=zeros, w_pos=ones, w_neg=ones)


def test_reg_zero_inside_tolerances_and_exact_hinge_outside() -> None:
    n, c, h, w = 2, 3, 4, 4
    x0 = torch.zeros(n, c, h, w)
    x_src = torch.zeros(n, c, h, w)
    weights = _uniform_weights(n, h, w)
    r = torch.tensor([0.8, 0.3])
    valid = torch.tensor([True, True])
    # inside: d_pos = 0.03^2 = 9e-4 <= 1e-3, d_neg = 0.2^2 = 0.04 >= 3e-2
    loss, m = region_regularizer(
        torch.full_like(x0, 0.03), torch.full_like(x0, 0.2), x0, x_src, weights, r, valid, 0.5, 0.7
    )
    assert loss.item() == 0.0 and m["reg/hinge_pos_active"] == 0.0 and m["reg/hinge_neg_active"] == 0.0
    # outside: d_pos = 0.1^2 = 0.01, d_neg = 0.1^2 = 0.01
    x0_pos, x0_neg = torch.full_like(x0, 0.1), torch.full_like(x0, 0.1)
    loss, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, r, valid, 0.5, 0.7, 1e-3, 3e-2)
    expected = ((r * 0.5 * (0.01 - 1e-3)) + (1 - r) * 0.7 * (3e-2 - 0.01)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert m["reg/hinge_pos_active"] == 1.0 and m["reg/hinge_neg_active"] == 1.0
    assert m["reg/d_pos"] == pytest.approx(0.01, rel=1e-5)


def test_reg_neg_target_and_xsrc_switches() -> None:
    n, c, h, w = 1, 2, 4, 4
    weights = _uniform_weights(n, h, w)
    x0, x_src = torch.zeros(n, c, h, w), torch.full((n, c, h, w), 0.5)
    x0_pos, x0_neg = torch.full_like(x0, 0.1), torch.full_like(x0, 0.3)
    args = (torch.tensor([0.5]), torch.tensor([True]))
    _, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args)
    assert m["reg/d_neg"] == pytest.approx(0.2**2)  # x0_neg vs x_src
    _, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args, reg_neg_target="pos_branch_vs_src")
    assert m["reg/d_neg"] == pytest.approx(0.4**2)  # x0_pos vs x_src
    _, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args, use_reg_xsrc=False)
    assert m["reg/d_neg"] == pytest.approx(0.3**2)  # x0_neg vs x0
    with pytest.raises(ValueError, match="reg_neg_target"):
        region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args, reg_neg_target="src")


def test_reg_pos_target_source_pulls_a_drifted_keep_region_back() -> None:
    """A sample whose keep region drifted from the source, reproduced exactly by the positive branch:
    the released anchor (the sample) sees nothing to fix; the source anchor pulls the branch back."""
    n, c, h, w = 1, 2, 4, 4
    weights = _uniform_weights(n, h, w)
    x_src = torch.zeros(n, c, h, w)
    x0 = torch.full((n, c, h, w), 0.2)  # theta_old's sample: keep region 0.2 off the source
    x0_pos = x0.clone().requires_grad_(True)
    x0_neg = torch.full_like(x0, 1.0)  # far from the source: the negative hinge stays off
    args = (torch.tensor([1.0]), torch.tensor([True]), 1.0, 1.0, 1e-3, 3e-2)
    loss, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args)
    assert loss.item() == 0.0 and m["reg/d_pos"] == 0.0 and m["reg/hinge_pos_active"] == 0.0
    loss, m = region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args, reg_pos_target="source")
    assert m["reg/d_pos"] == pytest.approx(0.2**2)
    assert loss.item() == pytest.approx(0.2**2 - 1e-3, rel=1e-5)
    loss.backward()
    assert x0_pos.grad is not None and (x0_pos.grad > 0).all()  # descent moves x0_pos toward x_src = 0
    with pytest.raises(ValueError, match="reg_pos_target"):
        region_regularizer(x0_pos, x0_neg, x0, x_src, weights, *args, reg_pos_target="src")


def test_weighted_sq_dist_by_hand() -> None:
    a = torch.zeros(1, 2, 1, 2)
    b = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    wgt = torch.tensor([[[[1.0, 0.5]]]])
    # channels 1 and 2: (1 + 0.5*4) + (9 + 0.5*16) = 20 over weight 2 * 1.5 = 3
    assert weighted_sq_dist(a, b, wgt).item() == pytest.approx(20 / 3)
    assert weighted_sq_dist(a, b, torch.zeros_like(wgt)).item() == 0.0


def test_objective_composes_terms() -> None:
    torch.manual_seed(0)
    cfg = LearnerConfig(lam_pos=0.8, lam_neg=0.5, kl_weight=1e-2)
    n, l_, d = 2, 16, 4
    x0, x_src, noise, v, v_old, v_ref = torch.randn(6, n, l_, d).unbind(0)
    t = torch.tensor([0.4, 0.9])
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
    r, valid = torch.tensor([0.7, 0.2]), torch.tensor([True, True])
    mask = torch.zeros(n, 1, 32, 32)
    mask[:, :, :16] = 1
    weights = region_weights(mask, (4, 4))

    def unpack(p: torch.Tensor) -> torch.Tensor:
        return p.transpose(1, 2).reshape(n, d, 4, 4)

    loss, m = nft_objective(cfg, x_t, t, x0, x_src, v, v_old, v_ref, r, valid, weights, unpack)
    assert loss.item() == pytest.approx(m["loss/policy"] + m["loss/reg"] + m["loss/kl"], rel=1e-5)
    assert {"nft/r_mean", "nft/valid_fraction", "reg/hinge_pos_active", "kl/v_ref_mse"} <= m.keys()
    no_reg, m2 = nft_objective(
        LearnerConfig(use_reg=False, kl_weight=0.0),
        x_t,
        t,
        x0,
        x_src,
        v,
        v_old,
        v_ref,
        r,
        valid,
        weights,
        unpack,
    )
    assert "loss/reg" not in m2 and no_reg.item() == pytest.approx(m["loss/policy"], rel=1e-5)


def test_grpo_loss_clipping() -> None:
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 8.0])
    valid = torch.tensor([True, True, True])
    loss, m = grpo_loss(old.clone(), old, adv, valid, clip_range=1e-4)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 5.0) / 3)  # ratio 1, A clipped to 5
    lp = torch.tensor([0.1, 0.1, 0.1], requires_grad=True)  # ratio e^0.1 beyond the clip range
    loss, m = grpo_loss(lp, old, adv, valid, clip_range=1e-4)
    (g,) = torch.autograd.grad(loss, lp)
    # positive A: clipped branch is the max (no gradient); negative A: unclipped ratio term is the max
    assert g[0].item() == 0.0 and g[2].item() == 0.0 and g[1].item() > 0
    assert m["grpo/clip_fraction"] == 1.0
