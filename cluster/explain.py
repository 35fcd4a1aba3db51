"""`cocoedit config show --explain`: every key of the resolved config with its value and the one-line
description written where the field is declared.

A field's description is its trailing comment (`lr: float = 1e-4  # AdamW learning rate`), else the
comment lines right above it; tests/cluster/test_config.py checks that every field has one.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
from typing import Any

import yaml

_DOCS: dict[type, dict[str, str]] = {}


def field_docs(cls: type) -> dict[str, str]:
    """{field name: description} of a dataclass and its dataclass bases, from the source comments."""
    if cls in _DOCS:
        return _DOCS[cls]
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "__dataclass_fields__" not in vars(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        docs.update(_comments(inspect.cleandoc("\n" + source) if source.startswith(" ") else source))
    _DOCS[cls] = docs
    return docs


def _comments(source: str) -> dict[str, str]:
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(above + trailing).strip()
        if text:
            docs[node.target.id] = text
    return docs


def explain(cfg: Any) -> str:
    """The resolved config as YAML-like lines `key: value  # description`, one per leaf field."""
    out: list[str] = []
    _walk(cfg, "", out)
    return "\n".join(out) + "\n"


def undocumented(cfg: Any) -> list[str]:
    """Dotted keys of every field of `cfg` (sections included) that has no description."""
    missing: list[str] = []

    def visit(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if "sections" in f.metadata:
                for name, section in value.items():
                    visit(section, f"{prefix}{name}.")
                continue
            if f.name not in docs and not dataclasses.is_dataclass(value):
                missing.append(prefix + f.name)
            if dataclasses.is_dataclass(value):
                visit(value, f"{prefix}{f.name}.")

    visit(cfg, "")
    return missing


def _walk(obj: Any, prefix: str, out: list[str]) -> None:
    docs = field_docs(type(obj))
    indent = "  " * prefix.count(".")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "sections" in f.metadata:
            for name, section in value.items():
                out.append(f"{indent}{name}:")
                _walk(section, f"{prefix}{name}.", out)
            continue
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:" + (f"  # {docs[f.name]}" if f.name in docs else ""))
            _walk(value, f"{prefix}{f.name}.", out)
            continue
        shown = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        out.append(f"{indent}{f.name}: {shown}" + (f"  # {docs[f.name]}" if f.name in docs else ""))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
