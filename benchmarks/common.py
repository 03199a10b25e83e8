"""Helpers shared by the benchmark scripts: machine facts and writing results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def source_commit(root: Path = Path(__file__).parent.parent) -> str:
    """The commit of the code this process runs, with ``-dirty`` when the code (not the results) had
    uncommitted changes: taken when the benchmark starts, so that commits made while it runs are not
    credited with its numbers."""
    commit = os.environ.get("ROBOLEARN_COMMIT", "")  # for copies of the tree without .git (a lent GPU machine)
    if commit:
        return commit
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
        changed = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "robolearn", "benchmarks", ":!benchmarks/results"],
            capture_output=True,
            cwd=root,
        )
    except OSError:
        return ""
    return head.stdout.strip() + ("-dirty" if head.stdout.strip() and changed.returncode == 1 else "")


COMMIT = source_commit()


def machine() -> dict:
    """What the numbers were measured on."""
    import mujoco
    import numpy

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "mujoco": mujoco.__version__,
        "numpy": numpy.__version__,
        "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
        "commit": COMMIT,
    }


def machine_line(facts: dict, mujoco: bool = False) -> str:
    """The results tables' closing line: what ``machine()`` measured on, and when."""
    version = f"MuJoCo {facts['mujoco']}, " if mujoco else ""
    return f"Machine: {facts['cpus']} CPUs, {version}commit {facts['commit']}, {facts['date']}."


def write_results(name: str, summary: dict, table_markdown: str) -> None:
    """Write ``results/<name>.json`` and ``.md`` and print the summary as the final JSON line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table_markdown)
    print(json.dumps(summary))
