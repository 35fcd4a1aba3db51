"""Shared test set-up: loopback-only networking, offline hubs, generated protos, one local Ray."""

from __future__ import annotations

import pytest

from cocoedit.loopback import apply_loopback_env
from cocoedit.ray_auth import enable_run_token

apply_loopback_env()
enable_run_token()  # the suite's Ray clusters (and the runs its tests start) use a per-session token


def pytest_configure(config: pytest.Config) -> None:
    from cocoedit.protos.codegen import build

    build()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs, 127.0.0.1) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
