"""Every command of README.md works as written: each is parsed out of the README's code blocks and run,
in README order, in a scratch directory (so later commands find what earlier ones wrote).

- `cocoedit` commands run as written, at tiny sizes: TINY is appended to every command that takes a
  config (a tiny editor pre-trained in seconds into the test's own $COCOEDIT_CACHE, small groups, and
  for `train`/`sweep` one epoch), and REWRITES (below, each with its reason) adapt the few words that
  depend on those sizes. A new `cocoedit` command in the README is covered without touching this file.
- A synopsis (a line with placeholders: `[...]`, `a|b`, `<name>`, DIR, FILE, N ...) is checked against
  the CLI: its subcommand exists and every option it names is one the subcommand takes.
- Other programs (setup, pytest, ray, curl, ...) are listed in SKIPPED with the reason; SLOW commands
  (minutes each) run only in the slow test. A command this file does not know fails the test ("not
  documented here"), as does one that exits non-zero; the failure names the README line.

    pytest tests/test_readme.py                 # the default run: ~2 CPU-minutes (16 min wall at load 30)
    pytest -m slow tests/test_readme.py         # every runnable command, sweeps and curation included
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Appended to every `cocoedit` command that takes a config: the pre-training recipe shrunk to seconds
# (its own cached editor, so the README's 60-epoch default run becomes one epoch of a tiny editor).
TINY = [
    "pretrain.num_items=16",
    "pretrain.eval_items=4",
    "pretrain.vae_steps=3",
    "pretrain.steps=3",
    "pretrain.batch_size=4",
]
# ... and to `train` / `sweep`: one epoch of 2 items x 4 edits, 4 sampling steps, a 2-item fixed set.
TINY_RUN = [
    "run.epochs=1",
    "data.synth_num=8",
    "data.n_items=2",
    "data.group_size=4",
    "rollout.num_steps=4",
    "learner.train_timesteps=2",
    "run.eval_items=2",
]
# (pattern, replacement, why): words of a command that depend on the sizes above.
REWRITES = [
    (r"checkpoints/epoch_00000060", "checkpoints/epoch_00000001", "the default run is shrunk to one epoch"),
    (r"--seeds \d+", "--seeds 1", "one seed per setting: the sweep machinery, not the statistics"),
    (r"/tmp/tiny_editor", "tiny_editor", "inside the scratch directory"),
    (r"^\.venv/bin/", "", "the environment running this test is first on PATH"),
]
# Command prefix -> why it is not run here.
SKIPPED = {
    "bash scripts/setup.sh": "creates the environment this test runs in (.ci/run runs it on a clean checkout)",
    "HF_HUB_OFFLINE=1 .venv/bin/python -m pytest": "the test suite itself",
    "uv pip install": "installs from PyPI (network); tests do not change the environment",
    "MLFLOW_ALLOW_FILE_STORE=true .venv/bin/mlflow ui": "needs the full mlflow the line above installs; a server that "
    "runs until stopped",
    "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0": "environment of the `ray` lines after it",
    "ray start": "a Ray cluster on fixed ports; tests/cluster/test_job_submit.py runs this sequence on free ports",
    "ray job submit": "needs the cluster of `ray start` (tests/cluster/test_job_submit.py submits a tiny job)",
    "curl -s http://127.0.0.1:8080/metrics": "needs the cluster of `ray start` (tests/cluster/test_job_submit.py)",
    "ray stop": "stops every Ray cluster of this user on the machine, other tests' included",
    "cocoedit serve mllm --model /models/": "needs Qwen2.5-VL-32B-Instruct's weights and GPUs",
    "cocoedit data check /data/cocoedit40k": "needs the CoCoEdit-40K dataset",
    "cocoedit rate serve": "a server that runs until stopped (tests/cluster/test_rate_browser.py rates through it)",
    "cocoedit rate report runs/rate/study": "reports the ratings the page above collects (tests/cluster/test_rate.py "
    "reports a study rated over its HTTP API)",
}
# Command prefix -> why it runs only under `-m slow`.
SLOW = {
    "cocoedit sweep": "a grid of trainings: each setting one epoch here, still minutes in all",
    "cocoedit data curate --config cluster/configs/tiny_cpu_vllm.yaml": "builds the tiny vLLM judge and "
    "starts vLLM on CPU (minutes)",
    "cocoedit data check data/curated": "checks what the slow curation above writes",
    "cocoedit train data.manifest=data/curated": "trains on what the slow curation above writes",
    "cocoedit train data.manifest=data/synth": "a second training (a minute even at tiny sizes)",
}
TAKES_CONFIG = ("train", "sweep", "eval", "pretrain-tiny", "data curate", "plan", "config show", "serve")
PLACEHOLDER = re.compile(r"^\[|\]$|\||<\w+>|^(?:[A-Z][A-Z0-9_]*|GiB)(?:[=/,:][A-Z0-9_,]+)*$")


@dataclass(frozen=True)
class Command:
    line: int  # README line where it starts
    text: str  # continuation lines joined, the trailing comment removed


def readme_commands(text: str) -> list[Command]:
    """Every shell line of the README's code blocks (fenced without a language or bash/sh, and indented
    blocks), `\\` continuations joined; blocks holding a drawing (box characters) are no commands."""
    lines = text.split("\n")
    blocks: list[tuple[int, list[str]]] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, j = lines[i][3:].strip(), i + 1
            while not lines[j].startswith("```"):
                j += 1
            if lang in ("", "bash", "sh", "shell"):
                blocks.append((i + 2, lines[i + 1 : j]))
            i = j + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            blocks.append((i + 1, [ln[4:] for ln in lines[i:j]]))
            i = j
        else:
            i += 1
    commands = []
    for start, block in blocks:
        if any(ch in "".join(block) for ch in "│─►▲▼"):
            continue
        k = 0
        while k < len(block):
            first, parts = k, [block[k].rstrip()]
            while parts[-1].endswith("\\"):
                k += 1
                parts[-1] = parts[-1][:-1]
                parts.append(block[k].strip())
            k += 1
            joined = re.sub(r"\s+#\s.*$", "", " ".join(p.strip() for p in parts)).strip()
            if joined and not joined.startswith("#"):
                commands.extend(Command(start + first, c.strip()) for c in joined.split(" && "))
    return commands


def is_synopsis(cmd: str) -> bool:
    return any(PLACEHOLDER.search(tok) for tok in cmd.split()[1:])


def check_synopsis(cmd: str) -> None:
    """The subcommand exists and takes every option the synopsis names."""
    from cocoedit.cluster.cli import build_parser

    words = cmd.split()
    assert words[0] == "cocoedit", (
        f"`{cmd}`: a synopsis of another program; list it in SKIPPED with the reason"
    )
    parser, rest = build_parser(), words[1:]
    while rest:
        actions = {a.dest: a for a in parser._actions}  # noqa: SLF001 - argparse keeps subparsers here
        sub = next((a for a in actions.values() if a.choices and isinstance(a.choices, dict)), None)
        if sub is None:
            break
        if rest[0] not in sub.choices:
            if "run" not in sub.choices:  # `cocoedit eval --bench ...` is `cocoedit eval run ...` (cli.main)
                break
            rest = ["run", *rest]
        parser, rest = sub.choices[rest[0]], rest[1:]
    options = {o for a in parser._actions for o in a.option_strings}  # noqa: SLF001
    named = {m for tok in rest for m in re.findall(r"(--[a-z][a-z-]*)", tok)}
    assert named <= options, f"`{cmd}`: `{parser.prog}` takes no {sorted(named - options)}"


def prepared(cmd: str) -> str:
    """The command as this test runs it (REWRITES, then TINY / TINY_RUN for commands with a config)."""
    for pattern, replacement, _ in REWRITES:
        cmd = re.sub(pattern, replacement, cmd)
    words = shlex.split(cmd)
    n_env = next((i for i, w in enumerate(words) if not re.match(r"^[A-Z_]+=", w)), len(words))
    env, words = words[:n_env], words[n_env:]
    if words and words[0] == "cocoedit":
        sub = " ".join(words[1:3])
        if any(sub == s or sub.startswith(s + " ") or words[1] == s for s in TAKES_CONFIG):
            words += TINY + (TINY_RUN if words[1] in ("train", "sweep") else [])
    return shlex.join([*env, *words]) if env else shlex.join(words)


def _prefix(cmd: str, table: dict[str, str]) -> str | None:
    return next((p for p in table if cmd.startswith(p)), None)


def run_readme(tmp: Path, slow: bool) -> list[str]:
    """Run every README command in README order inside `tmp`; returns a line per command (what was done)."""
    for name in ("cluster", "scripts", "bench", "tests"):
        (tmp / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COCOEDIT_CACHE": str(tmp / ".cache"),
        "HF_HUB_OFFLINE": "1",
    }
    done = []
    for c in readme_commands(README.read_text()):
        where = f"README.md:{c.line} `{c.text}`"
        skipped = _prefix(c.text, SKIPPED)
        if skipped is not None:
            done.append(f"skipped  {where}: {SKIPPED[skipped]}")
            continue
        if is_synopsis(c.text):
            check_synopsis(c.text)
            done.append(f"synopsis {where}")
            continue
        cmd = prepared(c.text)
        program = next(w for w in cmd.split() if "=" not in w)
        assert program == "cocoedit", (
            f"{where} is not documented in tests/test_readme.py: a command of another program must be listed "
            "in SKIPPED (with the reason) or made runnable here"
        )
        slow_only = _prefix(c.text, SLOW)
        if slow_only is not None and not slow:
            done.append(f"slow     {where}: {SLOW[slow_only]}")
            continue
        t0 = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", cmd], cwd=tmp, env=env, capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, (
            f"{where} exited {result.returncode} (run as `{cmd}`):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        done.append(f"ran      {where} ({time.monotonic() - t0:.0f} s)")
    return done


def test_readme_commands_parse_into_what_the_test_knows() -> None:
    """Fast: every command is skipped with a reason, a synopsis the CLI accepts, or a cocoedit command."""
    commands = readme_commands(README.read_text())
    assert any(c.text == "bash scripts/setup.sh" for c in commands)
    for c in commands:
        if _prefix(c.text, SKIPPED) is None and is_synopsis(c.text):
            check_synopsis(c.text)
    # every listed prefix still names a README command (a stale entry would hide a new one)
    texts = [c.text for c in commands]
    for table in (SKIPPED, SLOW):
        stale = [p for p in table if not any(t.startswith(p) for t in texts)]
        assert not stale, f"no README command starts with {stale}: remove them from tests/test_readme.py"


def test_every_readme_command_runs(tmp_path: Path) -> None:
    """The default run: every command except SKIPPED and SLOW (one tiny training, its export and
    evaluation, data synth/check, pretrain-tiny, config show): 1m47 user + 13 s system CPU, 16 min wall
    on 2 cores at load average ~30 (2026-12-06)."""
    done = run_readme(tmp_path, slow=False)
    print("\n".join(done))
    assert any(line.startswith("ran      ") and "cocoedit train`" in line for line in done)
    card = tmp_path / "runs" / "tiny_cpu" / "lora" / "README.md"
    assert card.is_file() and "## Final evaluation" in card.read_text()
    assert (tmp_path / "exported" / "tiny_cpu" / "README.md").is_file()


@pytest.mark.slow
def test_every_readme_command_runs_including_the_slow_ones(tmp_path: Path) -> None:
    """Every runnable command, sweeps (one seed, one epoch per setting) and the vLLM curation included:
    tens of minutes on 2 cores. Run: pytest -m slow -s tests/test_readme.py"""
    print("\n".join(run_readme(tmp_path, slow=True)))
