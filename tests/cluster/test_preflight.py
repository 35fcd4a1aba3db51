"""Errors before work, in one line: the tiny editor's resolution, data files and manifest rows, and the
ports a command listens on are refused before Ray starts, each with one line naming the fix; `plan`
names a fix for every role that does not fit."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main as cli_main


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command; it must exit 1 with one line on stderr, before any Ray cluster starts."""
    import ray

    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not ray.is_initialized()
    return err


def test_tiny_editor_resolution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["train", "data.image_size=64", f"run.run_dir={tmp_path / 'run'}"])
    assert "data.image_size=64 but the tiny editor is pre-trained at pretrain.image_size=32" in err
    assert "drop data.image_size" in err


def test_missing_data_file_and_bad_manifest_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = f"run.run_dir={tmp_path / 'run'}"
    err = _refused(capsys, ["train", f"data.manifest={tmp_path / 'nowhere.jsonl'}", run])
    assert f"data.manifest={tmp_path / 'nowhere.jsonl'}" in err and "nowhere.jsonl" in err
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "source": "a.png", "instruction": "x", "mask": "m.png"}) + "\n"
    )
    err = _refused(capsys, ["train", f"data.manifest={manifest}", "run.eval_every=0", run])
    assert (
        "problem(s)" in err
        and "cocoedit data check" in err
        and "first: line 1: source: file not found" in err
    )


def test_taken_metrics_port(tmp_path: Path, taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", f"run.metrics_export_port={taken_port}", f"run.run_dir={tmp_path / 'run'}"]
    err = _refused(capsys, argv)
    assert f"port {taken_port} on 127.0.0.1 is taken" in err and "run.metrics_export_port=" in err


def test_taken_serve_port(taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["serve", "pixel", "--port", str(taken_port)])
    assert f"port {taken_port} on 127.0.0.1 is taken" in err and "--port=" in err


def test_plan_names_a_fix_for_every_role_that_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--gpu-memory", "0.001", "rollout.gpus_per_worker=1", "learner.gpus_per_rank=1"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "rollout worker cannot fit" in err and "learner rank cannot fit" in err
    fixes = [line for line in err.splitlines() if line.strip().startswith("fix:")]
    assert len(fixes) == 2
    assert "its weights alone take" in fixes[0] and "GPUs with more memory" in fixes[0]
