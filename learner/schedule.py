"""The region regularizer's weight schedule: a multiplier m(t) of lam_pos and lam_neg over the run
(docs/algorithm.md section 5, "A schedule of the weights"). Pure Python.

    t = run_fraction(epoch, cfg.run.epochs)        # 0 at the first epoch, 1 at the last
    m = lam_multiplier(cfg.learner, t)             # the epoch trains with lam_pos m, lam_neg m

m depends on the epoch and the run length alone (never on the optimizer step, which an epoch without a
valid group does not take), so a resumed run trains every epoch with the weights an uninterrupted run
would.
"""

from __future__ import annotations

import math
from typing import Optional

from cocoedit.learner.config import LearnerConfig


def run_fraction(epoch: int, epochs: int) -> float:
    """t = epoch / (epochs - 1) in [0, 1] for the 0-based `epoch` of a run of `epochs`; 0 for a 1-epoch run."""
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is not in a run of {epochs} epochs: expected 0 <= epoch < epochs")
    return 0.0 if epochs == 1 else epoch / (epochs - 1)


def lam_multiplier(cfg: LearnerConfig, t: Optional[float]) -> float:
    """m(t) of `cfg.lam_schedule` from `lam_schedule_start` (t = 0) to `lam_schedule_end` (t = 1):

    constant  1 (start and end unused: the weights are lam_pos, lam_neg as given)
    linear    (1 - t) start + t end
    cosine    w start + (1 - w) end, w = (1 + cos(pi t)) / 2   (flat at both ends, fastest in the middle)
    step      start for t < lam_schedule_at, end from there on

    t None (the caller does not know where the run stands) is allowed only for `constant`."""
    kind = cfg.lam_schedule
    if kind == "constant":
        return 1.0
    if t is None:
        raise ValueError(
            f"learner.lam_schedule={kind} needs the run's progress t in [0, 1]: pass progress=run_fraction(epoch, "
            "epochs) to Learner.update"
        )
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"the run's progress t={t!r} must be in [0, 1] (run_fraction(epoch, epochs))")
    start, end = cfg.lam_schedule_start, cfg.lam_schedule_end
    if kind == "linear":
        return (1.0 - t) * start + t * end  # exactly start at t = 0 and end at t = 1
    if kind == "cosine":
        w = 0.5 * (1.0 + math.cos(math.pi * t))  # exactly 1 at t = 0 and 0 at t = 1
        return w * start + (1.0 - w) * end
    if kind == "step":
        return start if t < cfg.lam_schedule_at else end
    raise ValueError(f"learner.lam_schedule={kind!r} must be one of constant, linear, cosine, step")


def describe(cfg: LearnerConfig) -> str:
    """The schedule in words for a model card or log line ("" for constant)."""
    if cfg.lam_schedule == "constant":
        return ""
    start, end = cfg.lam_schedule_start, cfg.lam_schedule_end
    at = f" at {cfg.lam_schedule_at:g} of the run" if cfg.lam_schedule == "step" else ""
    return f"{cfg.lam_schedule} schedule of both weights, x{start:g} -> x{end:g}{at} over the epochs"
