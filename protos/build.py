"""`python -m cocoedit.protos.build [--check]`: regenerate the gRPC code of reward.proto (see codegen.py)."""

import sys

from cocoedit.protos.codegen import build, stale

if __name__ == "__main__":
    if "--check" in sys.argv:
        out_of_date = stale()
        if out_of_date:
            print(f"stale generated code: {out_of_date}; run python -m cocoedit.protos.build")
            sys.exit(1)
        print("generated code is up to date")
    else:
        print(f"rewrote {build() or 'nothing (up to date)'}")
