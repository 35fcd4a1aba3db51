"""`python -m protos.build [--force]`: generate the gRPC code of reward.proto (see protos/codegen.py)."""

import sys

from protos.codegen import build

if __name__ == "__main__":
    build(force="--force" in sys.argv)
