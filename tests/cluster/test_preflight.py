"""Errors before work, in one line: the tiny editor's resolution, data files and manifest rows, and the
ports a command listens on are refused before Ray starts, each with one line naming the fix; `plan`
names a fix for every role that does not fit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
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


# The command in a process of its own (the suite's shared Ray cluster would hide a cluster it starts),
# which reports at exit whether it started or joined Ray.
CHILD = (
    "import sys\n"
    "from cocoedit.cluster.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "ray = sys.modules.get('ray')\n"
    "print('RAY STARTED' if ray is not None and ray.is_initialized() else '')\n"
    "sys.exit(rc)\n"
)


def _refused(argv: list[str]) -> str:
    """Run the command; it must exit 1 with one line on stderr, before any Ray cluster starts."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 1, err[-2000:]
    assert len(err.splitlines()) == 1, err
    assert "RAY STARTED" not in proc.stdout
    return err


def test_tiny_editor_resolution(tmp_path: Path) -> None:
    err = _refused(["train", "data.image_size=64", f"run.run_dir={tmp_path / 'run'}"])
    assert "data.image_size=64 but the tiny editor is pre-trained at pretrain.image_size=32" in err
    assert "drop data.image_size" in err


def test_missing_data_file_and_bad_manifest_row(tmp_path: Path) -> None:
    run = f"run.run_dir={tmp_path / 'run'}"
    err = _refused(["train", f"data.manifest={tmp_path / 'nowhere.jsonl'}", run])
    assert f"data.manifest={tmp_path / 'nowhere.jsonl'}" in err and "nowhere.jsonl" in err
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "source": "a.png", "instruction": "x", "mask": "m.png"}) + "\n"
    )
    err = _refused(["train", f"data.manifest={manifest}", "run.eval_every=0", run])
    assert (
        "problem(s)" in err
        and "cocoedit data check" in err
        and "first: line 1: source: file not found" in err
    )


def test_taken_metrics_port(tmp_path: Path, taken_port: int) -> None:
    argv = ["train", f"run.metrics_export_port={taken_port}", f"run.run_dir={tmp_path / 'run'}"]
    err = _refused(argv)
    assert f"port {taken_port} on 127.0.0.1 is taken" in err and "run.metrics_export_port=" in err


def test_taken_serve_port(taken_port: int) -> None:
    err = _refused(["serve", "pixel", "--port", str(taken_port)])
    assert f"port {taken_port} on 127.0.0.1 is taken" in err and "--port=" in err


def test_plan_names_a_fix_for_every_role_that_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--gpu-memory", "0.001", "rollout.gpus_per_worker=1", "learner.gpus_per_rank=1"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "rollout worker cannot fit" in err and "learner rank cannot fit" in err
    fixes = [line for line in err.splitlines() if line.strip().startswith("fix:")]
    assert len(fixes) == 2
    assert "its weights alone take" in fixes[0] and "GPUs with more memory" in fixes[0]
