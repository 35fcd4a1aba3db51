"""Ray's token authentication for the local clusters `cocoedit train` starts: a fresh random token per
run, in a file only this user can read, never printed or logged.

    path = enable_run_token()   # before ray.init(): RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=path

Every process the driver starts (raylet, GCS, workers) inherits the two variables; a process without
the token (another user, or anything that finds the GCS address in `ps`) is refused by the GCS
(measured with Ray 2.60: `ray.init(address=...)` without the token fails with ConnectionError after
~25 s; a raw gRPC call answers UNAUTHENTICATED at once). An operator who sets RAY_AUTH_MODE himself
(e.g. `disabled`) keeps his choice.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Optional


def enable_run_token() -> Optional[Path]:
    """Turn on token auth with a new token for this process and its children; returns the token file,
    or None when RAY_AUTH_MODE was already set (the operator's choice is kept)."""
    if "RAY_AUTH_MODE" in os.environ:
        return None
    folder = Path(tempfile.mkdtemp(prefix="cocoedit-ray-"))  # 0700
    path = folder / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)  # the file wins, and nothing holds the token in the environment
    if "ray._raylet" in sys.modules:
        # Ray read its config when it was imported: without a refresh this process (the driver) would
        # not send the token its own cluster then requires (what Ray's own enabling does)
        from ray._raylet import (  # type: ignore[attr-defined]  # Cython module: no stubs for these
            AuthenticationTokenLoader,
            Config,
        )

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    return path
