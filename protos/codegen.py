"""Generate `reward_pb2.py` / `reward_pb2_grpc.py` from `reward.proto`.

Run: `python -m protos.build` (scripts/setup.sh does); importing `protos` also builds them when they
are missing or older than the proto (a `ray job submit --working-dir .` upload leaves the git-ignored
generated files behind). The generated files are not committed; the build is idempotent, skips work
when they are newer than the proto, is serialised by a lock file and replaces each file atomically, so
processes importing at the same moment never read half a file.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
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
    try:
        lock = open(HERE / ".build.lock", "w")  # noqa: SIM115 - held until the build is done
    except OSError as e:
        raise RuntimeError(
            f"the gRPC code of {PROTO} is missing or stale and {HERE} is not writable ({e}); run "
            "`python -m protos.build` where it is, or install the package with it built"
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or is_stale():  # another process may have built it while this one waited
            _generate()


def _generate() -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(dir=HERE, prefix=".build-") as tmp:
        args = ["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, str(PROTO)]) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        # protoc writes `import reward_pb2`; make it a package-relative import.
        grpc_file = Path(tmp) / "reward_pb2_grpc.py"
        text = grpc_file.read_text()
        grpc_file.write_text(
            re.sub(r"^import reward_pb2 as", "from protos import reward_pb2 as", text, flags=re.M)
        )
        for out in OUTPUTS:
            os.replace(Path(tmp) / out.name, out)
