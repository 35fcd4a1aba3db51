"""Generate `reward_pb2.py`, `reward_pb2_grpc.py` and `reward_pb2.pyi` from `reward.proto`.

The generated files are committed next to the proto, so importing `cocoedit.protos` never runs protoc
(an installed package may sit in a read-only site-packages, and a `ray job submit --working-dir .`
upload holds exactly what git holds). After editing the proto, regenerate them:

    python -m cocoedit.protos.build            # rewrite the three files
    python -m cocoedit.protos.build --check    # exit 1 when they differ from what the proto generates

tests/protos/test_build.py fails when the committed files are stale.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "reward.proto"
OUTPUTS = ("reward_pb2.py", "reward_pb2_grpc.py", "reward_pb2.pyi")


def generate() -> dict[str, str]:
    """The text of each generated file, as protoc (grpc_tools) writes it for reward.proto."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="cocoedit-protos-") as tmp:
        args = ["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, str(PROTO)]) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        texts = {name: (Path(tmp) / name).read_text() for name in OUTPUTS}
    # protoc writes `import reward_pb2`; inside the package it must be an absolute package import.
    texts["reward_pb2_grpc.py"] = re.sub(
        r"^import reward_pb2 as",
        "from cocoedit.protos import reward_pb2 as",
        texts["reward_pb2_grpc.py"],
        flags=re.M,
    )
    return texts


def stale() -> list[str]:
    """Names of the committed generated files that differ from what the proto generates now."""
    return [
        name
        for name, text in generate().items()
        if not (HERE / name).is_file() or (HERE / name).read_text() != text
    ]


def build() -> list[str]:
    """Rewrite the generated files that differ; returns their names."""
    changed = stale()
    for name, text in generate().items():
        if name in changed:
            (HERE / name).write_text(text)
    return changed
