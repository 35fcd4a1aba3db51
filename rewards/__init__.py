"""Reward services (pixel consistency, MLLM judge, synthetic judge), their gRPC server and client."""

if not __name__.startswith("cocoedit."):  # one module, one name: `import rewards` would duplicate every class
    raise ImportError(
        f"import cocoedit.{__name__}, not {__name__}: the parts of cocoedit import only under cocoedit."
    )
