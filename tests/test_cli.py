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


def test_help_describes_each_command_by_its_config_docstring():
    from robolearn import cli

    for name, (*_, description) in cli.COMMANDS.items():
        config_type, function = cli.command(name)
        assert config_type.__doc__.strip().splitlines()[0] == description, name
        assert callable(function)


def test_commands_without_a_network_start_without_torch():
    probe = "import sys; from robolearn import cli; [cli.command(n) for n in ('envs', 'record', 'info', 'verify', "
    probe += "'replay', 'render', 'export', 'import', 'preview')]; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_unknown_command_is_a_clear_error():
    result = run("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'; expected one of" in result.stderr and "train" in result.stderr


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


def test_main_job_from_recording_to_video(tmp_path):
    demos, policy = tmp_path / "demos" / "lift", tmp_path / "policies" / "lift-bc"
    steps = [
        ("record", "--task", "lift", "--episodes", "2", "--image-size", "32", "--out", str(demos), "--workers", "1"),
        ("info", str(demos)),
        ("verify", str(demos)),
        (
            "train",
            str(demos),
            "--out",
            str(policy),
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--eval-every",
            "-1",
            "--bc.channels",
            "8",
            "--bc.hidden",
            "32",
            "--scenes",  # the default recipe (relative trunk input, random scenes) with fewer scenes
            "64",
        ),
        ("eval", str(policy), "--episodes", "2", "--workers", "2", "--video", "--video-size", "64", "--label", "smoke"),
    ]
    for args in steps:
        result = run(*args)
        assert result.returncode == 0, f"robolearn {args[0]}: {result.stderr[-2000:]}"
    metrics = json.loads((policy / "eval" / "smoke" / "metrics.json").read_text())
    assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0
    frames, meta = read_mp4(policy / "eval" / "smoke" / "grid.mp4")
    assert meta["codec"] == "h264" and len(frames) > 10
    assert "success rate" in result.stdout
