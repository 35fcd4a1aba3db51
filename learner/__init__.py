"""Advantages, the DiffusionNFT loss with CoCoEdit's region regularizer, and the DeepSpeed learner."""

if not __name__.startswith("cocoedit."):  # one module, one name: `import learner` would duplicate every class
    raise ImportError(
        f"import cocoedit.{__name__}, not {__name__}: the parts of cocoedit import only under cocoedit."
    )
