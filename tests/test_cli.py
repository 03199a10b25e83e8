"""The real console script, end to end: help, the task list and a preview video."""

import json
import subprocess
import sys
from pathlib import Path

from robolearn.video import read_mp4

ROBOLEARN = [str(Path(sys.executable).with_name("robolearn"))]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ROBOLEARN + list(args), capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert "envs" in result.stdout and "preview" in result.stdout


def test_envs_lists_every_task_with_specs():
    result = run("envs")
    assert result.returncode == 0, result.stderr
    for task in ("reach", "push", "lift", "stack", "lift_cylinder"):
        assert f"{task}:" in result.stdout
    assert "rgb/wrist" in result.stdout and "action" in result.stdout


def test_envs_json_and_detail():
    result = run("envs", "--task", "lift", "--json")
    specs = json.loads(result.stdout)
    assert specs["lift"]["observations"]["rgb/front"]["shape"] == [84, 84, 3]
    detail = run("envs", "--task", "lift")
    assert "gripper_position" in detail.stdout


def test_unknown_task_is_a_clear_error():
    result = run("envs", "--task", "lfit")
    assert result.returncode != 0
    assert "unknown task 'lfit'" in result.stderr


def test_preview_writes_a_playable_h264_video(tmp_path):
    out = tmp_path / "preview.mp4"
    result = run("preview", "--tasks", "lift", "reach", "--episodes", "2", "--size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "lift: 2/2" in result.stdout
    frames, meta = read_mp4(out)
    assert meta["codec"] == "h264"
    assert frames.shape[1:] == (64, 128, 3)
    assert len(frames) > 20 and frames.std() > 10
