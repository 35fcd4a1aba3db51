"""The README and docs/ name only what exists: every repository path and every config key they mention.

Running every README command is tests/test_readme_commands.py; this test keeps the names true.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from cocoedit.cluster.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("actors", "rewards", "learner", "protos", "cluster", "bench", "tests", "docs", "scripts", "cocoedit")
# a repository path: starts at a top-level folder of ours and ends in a file extension or a slash (so a
# metric name such as `learner/skip_reason` is not one); no placeholders
PATH = re.compile(r"(?<![\w./<$-])((?:" + "|".join(TOP) + r")/(?:[\w.-]+/)*(?:[\w-]+\.[a-z]+|))(?![\w/<])")
SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
# a config key: a section and at least one field, not part of a longer dotted name (cfg.x, cocoedit.x)
# and not a file name (`data.py`, `pretrain.json`)
FILE = r"\.(?:py|json|jsonl|yaml|md|png|html|proto)\b"
KEY = re.compile(
    r"(?<![\w./<-])(?!\w+" + FILE + r")((?:" + "|".join(SECTIONS) + r")(?:\.[a-z_][a-z0-9_]*)+)(?![\w(<])"
)


def mentioned(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(document, name) for every match of `pattern` inside inline code or a code block of the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        code = re.findall(r"```.*?```|`[^`\n]+`|^    .*$", text, flags=re.S | re.M)
        for chunk in code:
            found += [(doc.name, m) for m in pattern.findall(chunk)]
    return sorted(set(found))


def key_exists(cfg: object, parts: list[str]) -> bool:
    """Whether the dotted path `parts` names a field of the config (a dict field takes any key below)."""
    for name in parts:
        if isinstance(cfg, dict):
            return True  # rewards.weights.pixel, rewards.addresses.NAME: keys of a mapping
        if not dataclasses.is_dataclass(cfg):
            return False
        if name == "sections":
            return False
        sections = getattr(cfg, "sections", None)
        if isinstance(sections, dict) and name in sections:  # rewards.<service>
            cfg = sections[name]
            continue
        if name not in {f.name for f in dataclasses.fields(cfg)}:
            return False
        cfg = getattr(cfg, name)
    return True


def test_every_repository_path_the_docs_name_exists() -> None:
    missing = []
    for doc, path in mentioned(PATH):
        base = ROOT / "docs" if doc != "README.md" and not (ROOT / path).exists() else ROOT
        if not (base / path).exists() and not (ROOT / path).exists():
            missing.append(f"{doc}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_every_config_key_the_docs_name_exists() -> None:
    cfg = load_config(None, [])
    unknown = [f"{doc}: {key}" for doc, key in mentioned(KEY) if not key_exists(cfg, key.split("."))]
    assert not unknown, "config keys named in the docs that the config does not have:\n" + "\n".join(unknown)


def test_the_checks_find_what_they_look_for() -> None:
    """The patterns see paths and keys in code spans and blocks, and the key walk refuses a stale key."""
    assert PATH.findall("see `cluster/train/loop.py` and cocoedit.cluster.x") == ["cluster/train/loop.py"]
    assert KEY.findall("`learner.lam_pos=0.8 rewards.mllm.scaling.replicas=2 cfg.run.epochs`") == [
        "learner.lam_pos",
        "rewards.mllm.scaling.replicas",
    ]
    cfg = load_config(None, [])
    assert key_exists(cfg, ["rewards", "mllm", "scaling", "gpus_per_replica"])
    assert key_exists(cfg, ["rewards", "weights", "pixel"])
    assert not key_exists(cfg, ["rewards", "mllm", "gpus_per_replica"])  # moved under scaling
