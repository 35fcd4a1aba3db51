"""`python -m cocoedit.cluster.train ARGS` is `cocoedit train ARGS` (the entry point of `ray job submit`)."""

import sys

from cocoedit.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
