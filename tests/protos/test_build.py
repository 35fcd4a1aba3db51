"""`import protos` builds the gRPC code where it is missing (a `ray job submit` upload leaves it out),
once, even when several processes import at the same moment."""

import shutil
import subprocess
import sys
from pathlib import Path

import protos

IMPORT = (
    "from protos import reward_pb2, reward_pb2_grpc; "
    "print(reward_pb2.__file__, reward_pb2_grpc.reward__pb2.ScoreRequest.DESCRIPTOR.full_name)"
)


def test_concurrent_first_imports_build_the_code_once(tmp_path: Path) -> None:
    package = tmp_path / "protos"
    shutil.copytree(
        Path(protos.__file__).parent, package, ignore=shutil.ignore_patterns("reward_pb2*", ".build*")
    )
    assert not list(package.glob("reward_pb2*"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORT],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert code == 0, err
        path, name = out.split()
        assert Path(path).parent == package and name == "cocoedit.reward.v1.ScoreRequest"
    assert sorted(p.name for p in package.glob("reward_pb2*")) == [
        "reward_pb2.py",
        "reward_pb2.pyi",
        "reward_pb2_grpc.py",
    ]
    assert not list(package.glob(".build-*"))  # no temp dir left behind
