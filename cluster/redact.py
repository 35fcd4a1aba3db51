"""Secrets kept out of what a run writes: config.yaml, `cocoedit config show`, logs, error messages and
tracker parameters see `***` in place of a password or token inside a URL
(`https://user:***@mlflow.example`, `...?token=***`) and in place of the value of a field whose name
says it is a secret (`token`, `password`, `secret`, `api_key`, ...; a `*_file` or `*_env` field names
where a secret is, and is kept).

    redact_tree(to_dict(cfg))      # a copy with secret-looking values replaced
    redact_text("run.mlflow_tracking_uri=https://u:p@h")   # -> "run.mlflow_tracking_uri=https://u:***@h"
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api_?key|credential|auth)", re.IGNORECASE)
_POINTER_NAME = re.compile(r"(_file|_env|_path|_dir)$", re.IGNORECASE)
# scheme://user:password@host  or  scheme://token@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::(?P<pw>[^/@\s]*))?@")
_QUERY = re.compile(
    r"(?P<key>[?&](?:[^=&#\s]*(?:password|passwd|secret|token|api_?key|key|sig|signature|auth)[^=&#\s]*))=(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)


def secret_name(name: str) -> bool:
    """Whether a field called `name` holds a secret itself (not a file or variable naming one)."""
    return bool(_SECRET_NAME.search(name)) and not _POINTER_NAME.search(name)


def redact_text(text: str) -> str:
    """`text` with the passwords and tokens of the URLs in it replaced by ***."""

    def userinfo(m: re.Match) -> str:
        if m.group("pw") is not None:
            return f"{m.group('scheme')}{m.group('user')}:{MASK}@"
        return f"{m.group('scheme')}{MASK}@" if m.group("user") else m.group(0)

    return _QUERY.sub(lambda m: f"{m.group('key')}={MASK}", _USERINFO.sub(userinfo, text))


def redact_tree(tree: Any, name: str = "") -> Any:
    """A copy of nested dicts/lists with every secret-looking string replaced (see the module doc)."""
    if isinstance(tree, dict):
        return {k: redact_tree(v, str(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact_tree(v, name) for v in tree]
    if isinstance(tree, str):
        return MASK if tree and secret_name(name) else redact_text(tree)
    return tree
