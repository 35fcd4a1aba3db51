"""The installed distribution is one `cocoedit` package that works outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("actors", "rewards", "learner", "protos", "cluster")


def test_the_wheel_holds_only_cocoedit_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy of the files git knows: setuptools' build/ folder in the checkout could hold
    # stale modules, and the copy is what a clean clone would package.
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if (ROOT / name).is_symlink():  # cocoedit/<part> -> ../<part>: a link in git, and in the copy
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build = subprocess.run(
        [
            "uv",
            "build",
            "--wheel",
            "--no-build-isolation",
            "--python",
            sys.executable,
            "-o",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("cocoedit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cocoedit", wheel.name.split("-py3")[0] + ".dist-info"}
    # every package folder of the checkout is in the wheel (a new subpackage must be listed in pyproject)
    folders = {
        p.parent.relative_to(ROOT).as_posix() for part in PARTS for p in (ROOT / part).rglob("__init__.py")
    }
    assert {f"cocoedit/{f}/__init__.py" for f in folders} <= set(names)
    assert {"cocoedit/cluster/configs/tiny_cpu.yaml", "cocoedit/protos/reward_pb2.py"} <= set(names)
    # the report templates and the Grafana dashboard travel with the code that reads them
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cluster" / "templates").iterdir()}
    assert {f"cocoedit/{p}" for p in shipped} | {
        "cocoedit/dashboards/cocoedit_grafana_dashboard.json"
    } <= set(names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import cocoedit.actors.data, cocoedit.protos.reward_pb2 as p; print(cocoedit.actors.data.__file__, p.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(Path(f).is_relative_to(site / "cocoedit") for f in out.stdout.split())
    shown = subprocess.run(
        [sys.executable, "-m", "cocoedit.cluster.cli", "config", "show", "learner.lr=0.5"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "lr: 0.5" in shown.stdout and "name: tiny_cpu" in shown.stdout
    # no generic top-level names leak: `import actors` fails outside the checkout
    leak = subprocess.run(
        [sys.executable, "-c", "import actors"], cwd=elsewhere, env=env, capture_output=True
    )
    assert leak.returncode != 0


def test_each_module_has_one_name(tmp_path: Path) -> None:
    """`cocoedit.<part>` resolves by plain paths (a link per part, no import hook), and nothing else
    does: the bare part names refuse to import, and tests, bench and the package itself are not under it."""
    for part in PARTS:
        link = ROOT / "cocoedit" / part
        assert link.is_symlink() and link.resolve() == ROOT / part
    code = (
        "import importlib, sys\n"
        "import cocoedit.actors.data, cocoedit.cluster.cli\n"
        "assert cocoedit.actors.data.__name__ == 'cocoedit.actors.data'\n"
        "for name in ('actors', 'cluster.cli', 'rewards', 'learner', 'protos', 'cocoedit.tests', "
        "'cocoedit.bench', 'cocoedit.cocoedit'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as e:\n"
        "        print(name, 'refused:', e)\n"
        "    else:\n"
        "        print(name, 'IMPORTED')\n"
    )
    # from the repository root, where every part's folder is on sys.path too
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED" not in out.stdout, out.stdout
    assert "actors refused: import cocoedit.actors, not actors" in out.stdout
