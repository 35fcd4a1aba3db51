"""The committed gRPC code is what reward.proto generates, and importing it writes nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cocoedit.protos
from cocoedit.protos import codegen


def test_committed_code_matches_the_proto() -> None:
    assert codegen.stale() == [], "run python -m cocoedit.protos.build after editing reward.proto"


def test_importing_the_protos_writes_nothing(tmp_path: Path) -> None:
    """A read-only copy of the package (as in site-packages) imports; protoc is never run at import."""
    root = tmp_path / "site"
    package = root / "cocoedit" / "protos"
    shutil.copytree(
        Path(cocoedit.protos.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "cocoedit" / "__init__.py").write_text("")
    for path in [*package.iterdir(), package, root / "cocoedit"]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    before = sorted(p.name for p in package.iterdir())
    code = (
        "import sys; sys.dont_write_bytecode = True; "
        "from cocoedit.protos import reward_pb2, reward_pb2_grpc; "
        "print(reward_pb2.__file__, reward_pb2_grpc.reward__pb2.ScoreRequest.DESCRIPTOR.full_name)"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
    finally:
        for path in [root / "cocoedit", package, *package.iterdir()]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert out.returncode == 0, out.stderr
    path, name = out.stdout.split()
    assert Path(path).parent == package and name == "cocoedit.reward.v1.ScoreRequest"
    assert sorted(p.name for p in package.iterdir()) == before
