"""The actor side: edit data, diffusion edit policies, samplers and the rollout worker."""

if not __name__.startswith("cocoedit."):  # one module, one name: `import actors` would duplicate every class
    raise ImportError(
        f"import cocoedit.{__name__}, not {__name__}: the parts of cocoedit import only under cocoedit."
    )
