"""What `cocoedit train` checks about the machine it starts on before Ray or torch start: the paths the
driver itself reads. (Values, ranges and rules between fields are the config loader's: cluster/config.py.)

    check_train_inputs(cfg)   # ConfigError naming the key and the fix
"""

from __future__ import annotations

import os

from cocoedit.cluster.config import Config, ConfigError


def check_train_inputs(cfg: Config) -> None:
    """Raise ConfigError when data.manifest (read by the driver) does not exist or cannot be read."""
    manifest = cfg.data.manifest
    if manifest is None:
        return
    what = "folder" if cfg.data.format == "benchmask" else "file"
    if not os.path.exists(manifest):
        raise ConfigError(
            f"data.manifest={manifest} does not exist (relative paths start at {os.getcwd()}); give the data "
            f"{what}, or leave data.manifest unset (null) for the synthetic task"
        )
    if not os.access(manifest, os.R_OK):
        raise ConfigError(f"data.manifest={manifest} is not readable by this user; fix its permissions")
