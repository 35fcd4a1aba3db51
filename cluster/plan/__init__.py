"""`cocoedit plan`: what every role of a run asks for and how much device memory it will hold.

    cocoedit plan --config cluster/configs/flux_kontext_8gpu.yaml --gpu-memory 80

Per role (rollout worker, learner rank, each reward service's replicas): the devices it asks for, the
parameters it holds, and an estimate of its peak memory on one device; exits 1 naming any GPU role
that does not fit `--gpu-memory` GiB. How each line is estimated:
- weights: the parameters of every component the role loads x the bytes of `policy.dtype`, counted
  from the safetensors headers of `policy.model_path` when it is a local directory, else from the
  family's published architecture built on PyTorch's meta device (the family's `Architecture`);
- LoRA + optimizer (learner): both adapters in float32 (actors.policies.lora), AdamW's two float32 moments and
  DeepSpeed's float32 master copy (ZeRO >= 1), divided over the ranks as the ZeRO stage partitions
  them (stage 1: optimizer states, stage 2: + the reduced gradients);
- activations: simulated, not guessed. The role's computation runs on the meta device (shapes only,
  no arithmetic) while every tensor an operation creates is counted for as long as it is alive:
  the transformer sampling a rollout batch and the VAE decoding it (rollout worker), the transformer's
  forward + backward through the LoRA at the learner's micro-batch with and without gradient
  checkpointing (learner). Attention is counted as a memory-efficient kernel holds it (output and
  log-sum-exp, no score matrix). The transformer is simulated with 1-2 blocks and extrapolated per
  block; without gradients the peak does not grow with depth;
- the judge (vLLM): its weights / tensor_parallel_size per GPU, and the KV cache that
  `gpu_memory_utilization` leaves after them and a fixed reserve for activations and CUDA graphs, in
  tokens against `max_model_len`;
- a fixed CUDA context per GPU process.
Modules: simulate.py (meta-device simulation and its cache), model.py (the policy's model and its
simulated activations), roles.py (the roles and their lines), report.py (text, CLI, run log).

Not counted: allocator fragmentation, text-encoder activations (one prompt at a time: tens of MB),
and the float32 norm outputs CUDA autocast adds. On CPU (GPU ask 0) the same estimate is host memory
on top of the process's libraries; bench/real_dims.py compares it with measured peak RSS.
"""

from __future__ import annotations

from cocoedit.cluster.plan.model import (
    PolicyModel,
    policy_model,
    transformer_activation_bytes,
    vae_activation_bytes,
)
from cocoedit.cluster.plan.report import cli_plan, failing, format_plan, log_plan
from cocoedit.cluster.plan.roles import (
    CUDA_CONTEXT_BYTES,
    DTYPE_BYTES,
    GIB,
    JUDGES,
    VLLM_RESERVE_BYTES,
    RolePlan,
    judge_plan,
    learner_plan,
    plan,
    role_components,
    rollout_plan,
    service_plan,
)
from cocoedit.cluster.plan.simulate import simulated_peak

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "DTYPE_BYTES",
    "GIB",
    "JUDGES",
    "VLLM_RESERVE_BYTES",
    "PolicyModel",
    "RolePlan",
    "cli_plan",
    "failing",
    "format_plan",
    "judge_plan",
    "learner_plan",
    "log_plan",
    "plan",
    "policy_model",
    "role_components",
    "rollout_plan",
    "service_plan",
    "simulated_peak",
    "transformer_activation_bytes",
    "vae_activation_bytes",
]
