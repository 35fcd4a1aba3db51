"""The reward contract (`reward.proto`) and its generated Python code (built by `python -m protos.build`,
or here on first import when missing or stale)."""

from protos.codegen import build as _build

_build()
