"""Generate `reward_pb2.py` / `reward_pb2_grpc.py` from `reward.proto`.

Run: `python -m protos.build` (scripts/setup.sh does). The generated files are not committed; the
build is idempotent and skips work when they are newer than the proto.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "reward.proto"
OUTPUTS = (HERE / "reward_pb2.py", HERE / "reward_pb2_grpc.py", HERE / "reward_pb2.pyi")


def is_stale() -> bool:
    """True when any generated file is missing or older than the proto."""
    proto_mtime = PROTO.stat().st_mtime
    return any(not p.exists() or p.stat().st_mtime < proto_mtime for p in OUTPUTS)


def build(force: bool = False) -> None:
    """Run grpc_tools.protoc on reward.proto; raise RuntimeError with protoc's message on failure."""
    if not force and not is_stale():
        return
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={HERE}",
        f"--pyi_out={HERE}",
        f"--grpc_python_out={HERE}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    # protoc writes `import reward_pb2`; make it a package-relative import.
    grpc_file = HERE / "reward_pb2_grpc.py"
    text = grpc_file.read_text()
    grpc_file.write_text(
        re.sub(r"^import reward_pb2 as", "from protos import reward_pb2 as", text, flags=re.M)
    )


if __name__ == "__main__":
    build(force="--force" in sys.argv)
