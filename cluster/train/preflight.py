"""What `cocoedit train` checks before Ray starts: the tiny editor's resolution, the data file and its
items (through `actors.data.split_held_out`, which the run then uses), and the run's local ports.

    check_train_inputs(cfg)            # ConfigError: the data file, reward CA and token the driver reads
    items, held_out = preflight(cfg)   # PreflightError: one line naming the problem and the fix

Every refusal here used to surface only after the cluster, the placement and the models had started,
inside a long traceback (or, for a taken metrics port, as Ray's "node timed out" 30 s later).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cocoedit.cluster.config import Config, ConfigError
from cocoedit.rewards.config import TOKEN_ENV, is_loopback

if TYPE_CHECKING:  # this module stays light: the CLI imports it before torch
    from cocoedit.actors.types import IndexItem


def check_train_inputs(cfg: Config) -> None:
    """Raise ConfigError when data.manifest (read by the driver) does not exist or cannot be read."""
    check_client_credentials(cfg)
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


def check_client_credentials(cfg: Config) -> None:
    """Raise ConfigError when services run beyond loopback and this machine (the driver) lacks the CA file
    or the token their client needs (README, Cluster: security)."""
    rewards = cfg.rewards
    beyond = [
        name
        for name in rewards.weights
        if name not in rewards.addresses
        and not is_loopback(rewards.service(name).server.host)
        and not rewards.service(name).server.insecure
    ]
    if not beyond:
        return
    client = rewards.client
    for key, path in (("tls_ca_file", client.tls_ca_file), ("token_file", client.token_file)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(
                f"rewards.client.{key}={path} is not a readable file on this machine (the driver), which "
                f"rewards {beyond} served beyond loopback need (README, Cluster: security)"
            )
    if client.token_file is None and not os.environ.get(TOKEN_ENV):
        raise ConfigError(
            f"rewards {beyond} are served beyond loopback and refuse calls without their token: set "
            f"rewards.client.token_file or ${TOKEN_ENV} on this machine (the driver)"
        )


class PreflightError(ValueError):
    """A run that cannot start; the message names the fix."""


def check_tiny_resolution(cfg: Config) -> None:
    """The tiny editor is pre-trained at `pretrain.image_size` and edits at that size only."""
    if not cfg.run.tiny or cfg.policy.model_path is not None:
        return
    if cfg.pretrain.image_size != cfg.data.image_size:
        raise PreflightError(
            f"data.image_size={cfg.data.image_size} but the tiny editor is pre-trained at "
            f"pretrain.image_size={cfg.pretrain.image_size}: drop data.image_size (images of any size are "
            f"resized to it), or set pretrain.image_size={cfg.data.image_size} too to pre-train a tiny editor "
            "at that size (minutes; cached)"
        )


def preflight(cfg: Config) -> tuple[dict[str, IndexItem], list[IndexItem]]:
    """(training items by id, held-out items) of `cfg`, every check of this module passed."""
    from cocoedit.actors.data import split_held_out

    check_train_inputs(cfg)
    check_tiny_resolution(cfg)
    try:
        return split_held_out(cfg.data, cfg.run.eval_items if cfg.run.eval_every else 0)
    except (ValueError, OSError) as e:
        # one line: the refusal with its fix, and the first listed problem (`cocoedit data check` lists all)
        lines = str(e).splitlines()
        first = f"; first: {lines[1].strip()}" if len(lines) > 1 else ""
        raise PreflightError(f"data.manifest={cfg.data.manifest}: {lines[0].rstrip(':')}{first}") from e
