"""The reward contract (`reward.proto`) and its generated Python code, committed beside it (regenerate
with `python -m cocoedit.protos.build` after editing the proto)."""

if not __name__.startswith("cocoedit."):  # one module, one name: `import protos` would duplicate every class
    raise ImportError(
        f"import cocoedit.{__name__}, not {__name__}: the parts of cocoedit import only under cocoedit."
    )
