"""Helpers shared by the benchmark scripts: machine facts and writing results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    import mujoco
    import numpy

    commit = os.environ.get("ROBOLEARN_COMMIT", "")  # for copies of the tree without .git (a lent GPU machine)
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        except OSError:
            pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "mujoco": mujoco.__version__,
        "numpy": numpy.__version__,
        "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
        "commit": commit.strip(),
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
