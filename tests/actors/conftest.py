"""Tiny editors built once per test session into temporary directories (seconds, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """family -> directory of a tiny diffusers model of that family (built on first use)."""
    from cocoedit.actors.policies.tiny import build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny_{family}"), seed=0)
        return built[family]

    return get
