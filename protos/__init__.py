"""The reward contract (`reward.proto`) and its generated Python code, committed beside it (regenerate
with `python -m cocoedit.protos.build` after editing the proto)."""
