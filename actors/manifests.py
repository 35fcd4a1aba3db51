"""What a data file lists: three formats read into ItemRefs (text and paths, no pixels), line by line.

- `manifest` (ours): JSONL, one item per line, paths relative to the dataset root:
      {"id": "a1", "source": "img/a1.png", "instruction": "make the car red", "mask": "mask/a1.png",
       "target": "tgt/a1.png", "task": "recolour", "group": "cars"}
  `target`, `task` and `group` are optional; any other key is a problem. Masks: edit_white by default.
- `cocoedit40k`: CoCoEdit-40K's `metadata.jsonl` (`prompt`, `image`, `mask`, optional `id`; extra keys
  ignored). Its masks are white = KEEP: mask_polarity="keep_white".
- `benchmask`: GEdit-Bench / ImgEdit-Bench with masks, a folder holding `<key>.png` (or .jpg, .jpeg,
  .webp) with `<key>_mask.png` beside it and `instructions.jsonl`, one line per item:
      {"key": "0001", "instruction": "remove the cup", "task": "remove"}
  (`task_type` / `edit_type` are accepted for `task`; extra keys ignored). Pass the folder or the
  instructions file.

The dataset root is `data.root`, or the data file's folder (benchmask: the folder). Every path must stay
inside it: an absolute path or a `..` that climbs out is a problem here; a symlink that points out is
found when the file itself is checked (actors.items.check_files). The data file must be a regular file
of at most `data.max_manifest_bytes`, and it is read with that bound, one line (at most MAX_LINE_BYTES)
at a time, so a data file pointing at a device or a pipe cannot make the reader grow.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cocoedit.actors.types import DataSource, ItemRef

FORMATS: tuple[str, ...] = ("manifest", "cocoedit40k", "benchmask")
DEFAULT_POLARITY: dict[str, str] = {
    "manifest": "edit_white",
    "cocoedit40k": "keep_white",
    "benchmask": "edit_white",
}
MANIFEST_REQUIRED = ("id", "source", "instruction", "mask")
MANIFEST_OPTIONAL = ("target", "task", "group")
BENCH_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BENCH_INSTRUCTIONS = "instructions.jsonl"
MAX_LINE_BYTES = 2**20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data file: 1-based `line` of the JSONL file (0 = the file itself)."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


def dataset_root(path: Path, format: str, root: Optional[str]) -> Path:
    """The folder every item path is relative to: `root` when given, else the data file's folder."""
    if root is not None:
        return Path(root).absolute()
    return (path if format == "benchmask" and path.is_dir() else path.parent).absolute()


def inside_root(value: str, root: Path) -> tuple[Optional[str], str]:
    """(`value` as a normalised relative path, "") when it names a file under `root` without leaving it,
    else (None, why). Lexical only: symlinks are followed when the file is checked."""
    if "\0" in value:
        return None, "contains a NUL character"
    if os.path.isabs(value):
        return None, f"absolute path {value!r}; paths are relative to the dataset root {root} (data.root)"
    norm = os.path.normpath(value)
    if norm == ".." or norm.startswith(".." + os.sep):
        return None, f"{value!r} leaves the dataset root {root} (data.root)"
    if norm == ".":
        return None, f"{value!r} names the dataset root itself, not a file"
    return norm, ""


def _data_file_problem(path: Path, max_bytes: int) -> Optional[Problem]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return Problem(0, "file", f"{path} not found")
    except OSError as e:
        return Problem(0, "file", f"cannot read {path}: {e.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return Problem(0, "file", f"{path} is not a regular file")
    if info.st_size > max_bytes:
        return Problem(
            0, "file", f"{path} is {info.st_size} bytes, over data.max_manifest_bytes={max_bytes}; raise it"
        )
    return None


def _read_jsonl(path: Path, max_bytes: int, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """Parsed objects with their 1-based line numbers, read with a bound on the total and on each line;
    blank lines are skipped, every bad line is appended to `problems`."""
    problem = _data_file_problem(path, max_bytes)
    if problem is not None:
        problems.append(problem)
        return
    total = 0
    with path.open("rb") as f:
        line = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            line += 1
            total += len(raw)
            long = len(raw) > MAX_LINE_BYTES
            while long and total <= max_bytes and not raw.endswith(b"\n") and raw:
                raw = f.readline(MAX_LINE_BYTES + 1)  # the rest of an overlong line, thrown away
                total += len(raw)
            if total > max_bytes:  # the file grew after it was measured
                problems.append(
                    Problem(0, "file", f"{path} holds over data.max_manifest_bytes={max_bytes} bytes")
                )
                return
            if long:
                problems.append(Problem(line, "json", f"line longer than {MAX_LINE_BYTES} bytes"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(Problem(line, "json", f"not UTF-8 text ({e.reason} at byte {e.start})"))
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(Problem(line, "json", f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(line, "json", f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield line, obj


def _text_field(obj: dict, key: str, line: int, problems: list[Problem], required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            problems.append(Problem(line, key, "missing required field"))
        return ""
    if not isinstance(value, str):
        problems.append(Problem(line, key, f"must be a string, got {type(value).__name__}"))
        return ""
    if required and not value.strip():
        problems.append(Problem(line, key, "is empty"))
        return ""
    return value


def _path_field(
    obj: dict, key: str, line: int, root: Path, problems: list[Problem], required: bool = True
) -> str:
    value = _text_field(obj, key, line, problems, required)
    if not value:
        return ""
    rel, why = inside_root(value, root)
    if rel is None:
        problems.append(Problem(line, key, why))
        return ""
    return rel


def _refs_manifest(
    path: Path, data: DataSource, max_bytes: int, problems: list[Problem]
) -> Iterator[ItemRef]:
    root = Path(data.root)
    allowed = ", ".join(MANIFEST_REQUIRED + MANIFEST_OPTIONAL)
    for line, obj in _read_jsonl(path, max_bytes, problems):
        n = len(problems)
        for key in sorted(set(obj) - set(MANIFEST_REQUIRED) - set(MANIFEST_OPTIONAL)):
            problems.append(Problem(line, key, f"unknown field (allowed: {allowed})"))
        item_id = _text_field(obj, "id", line, problems)
        source = _path_field(obj, "source", line, root, problems)
        instruction = _text_field(obj, "instruction", line, problems)
        mask = _path_field(obj, "mask", line, root, problems)
        target = _path_field(obj, "target", line, root, problems, required=False)
        task = _text_field(obj, "task", line, problems, required=False)
        group = _text_field(obj, "group", line, problems, required=False)
        if len(problems) == n:
            # tags take a handful of values over thousands of items: one string object each
            task, group = sys.intern(task), sys.intern(group)
            yield ItemRef(item_id, instruction, source, mask, target or None, task, group, line, data)


def _refs_cocoedit40k(
    path: Path, data: DataSource, max_bytes: int, problems: list[Problem]
) -> Iterator[ItemRef]:
    root = Path(data.root)
    for line, obj in _read_jsonl(path, max_bytes, problems):
        n = len(problems)
        prompt = _text_field(obj, "prompt", line, problems)
        image = _path_field(obj, "image", line, root, problems)
        mask = _path_field(obj, "mask", line, root, problems)
        # the same source image carries several prompts: the line number keeps ids unique
        item_id = _text_field(obj, "id", line, problems, required=False) or f"{line:06d}-{Path(image).stem}"
        if len(problems) == n:
            yield ItemRef(item_id, prompt, image, mask, None, "", "", line, data)


def _refs_benchmask(
    path: Path, data: DataSource, max_bytes: int, problems: list[Problem]
) -> Iterator[ItemRef]:
    root = Path(data.root)
    folder = path if path.is_dir() else path.parent
    instructions = folder / BENCH_INSTRUCTIONS if path.is_dir() else path
    if not instructions.is_file():
        problems.append(
            Problem(0, "file", f"{instructions} not found; a benchmask folder needs {BENCH_INSTRUCTIONS}")
        )
        return
    for line, obj in _read_jsonl(instructions, max_bytes, problems):
        n = len(problems)
        key = _text_field(obj, "key", line, problems)
        instruction = _text_field(obj, "instruction", line, problems)
        task = ""
        for name in ("task", "task_type", "edit_type"):
            task = task or _text_field(obj, name, line, problems, required=False)
        if len(problems) > n:
            continue
        stem, why = inside_root(os.path.relpath(folder / key, root), root)
        if stem is None:
            problems.append(Problem(line, "key", why))
            continue
        sources = [stem + s for s in BENCH_IMAGE_SUFFIXES if (root / (stem + s)).is_file()]
        if not sources:
            names = "/".join(BENCH_IMAGE_SUFFIXES)
            problems.append(Problem(line, "source", f"no image {key}{{{names}}} in {folder}"))
            continue
        yield ItemRef(
            key, instruction, sources[0], stem + "_mask.png", None, sys.intern(task), "", line, data
        )


READERS = {"manifest": _refs_manifest, "cocoedit40k": _refs_cocoedit40k, "benchmask": _refs_benchmask}


def read_refs(data: DataSource, format: str, max_bytes: int) -> tuple[list[ItemRef], list[Problem]]:
    """The items a data file lists, and every problem found without opening their images (JSON, fields,
    paths that leave the root, duplicate ids). `max_bytes` bounds the data file."""
    if format not in READERS:
        raise ValueError(f"unknown data format {format!r}; expected one of {FORMATS}")
    path = Path(data.path)
    if path.is_dir() and format != "benchmask":
        return [], [Problem(0, "file", f"{path} is a folder; pass the {format} JSONL file")]
    problems: list[Problem] = []
    refs: list[ItemRef] = []
    first_line: dict[str, int] = {}
    for ref in READERS[format](path, data, max_bytes, problems):
        if ref.item_id in first_line:
            reason = f"duplicate id {ref.item_id!r} (first on line {first_line[ref.item_id]})"
            problems.append(Problem(ref.line, "id", reason))
            continue
        first_line[ref.item_id] = ref.line
        refs.append(ref)
    return refs, problems
