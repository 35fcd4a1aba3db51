"""Config, CLI, Ray placement and launch, the training loop and the evaluation driver."""

if not __name__.startswith("cocoedit."):  # one module, one name: `import cluster` would duplicate every class
    raise ImportError(
        f"import cocoedit.{__name__}, not {__name__}: the parts of cocoedit import only under cocoedit."
    )
