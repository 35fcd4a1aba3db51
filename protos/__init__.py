"""The reward contract (`reward.proto`) and its generated Python code (built by `python -m protos.build`)."""
