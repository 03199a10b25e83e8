"""The bc benchmark's bookkeeping: per-task settings and tables merged from several runs."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import bc


def test_task_settings_change_one_task_only():
    args, per_task = bc.arguments(
        ["--tasks", "lift", "push", "--task-settings", "push:chunk=8", "push:steps=3000", "push:unshift=false"]
    )
    assert (per_task["push"].chunk, per_task["push"].steps, per_task["push"].unshift) == (8, 3000, False)
    assert per_task["lift"].unshift and not bc.bc_config(per_task["push"]).unshift
    assert (per_task["lift"].chunk, per_task["lift"].steps) == (args.chunk, args.steps) == (4, 2000)
    assert bc.bc_config(per_task["push"]).chunk == 8
    assert "--task-settings push:chunk=8 push:steps=3000 push:unshift=false" in bc.command_line(args)
    # Lists are comma-separated; the floor is a float.
    args, per_task = bc.arguments(
        ["--tasks", "lift", "push", "--task-settings", "push:state_features=gripper_opening,gripper_quaternion"]
        + ["push:scale_floor=0.01"]
    )
    push = bc.bc_config(per_task["push"])
    assert push.state_features == ("gripper_opening", "gripper_quaternion") and push.scale_floor == 0.01
    assert bc.bc_config(per_task["lift"]).state_features == ("gripper_opening",)
    assert bc.bc_config(per_task["lift"]).scale_floor == 0.001


@pytest.mark.parametrize(
    "entry, message",
    [
        ("push:chunk", "TASK:FLAG=VALUE"),
        ("push:lr=1", "FLAG one of"),
        ("stack:chunk=4", "not in --tasks"),
        ("push:chunk=four", "expected int"),
        ("push:unshift=yes", "true or false"),
    ],
)
def test_bad_task_settings_are_refused(entry, message):
    with pytest.raises(SystemExit) as stop:
        bc.arguments(["--tasks", "lift", "push", "--task-settings", entry])
    assert message in str(stop.value)


def _entry(rate: float, command: str, commit: str) -> dict:
    run = {"success_rate": rate, "train_seconds": 600.0, "samples_per_s": 200.0}
    settings = {"image_size": 64, "select_every": 1000, "episodes": 100, "cameras": ["front", "wrist"]}
    return {"runs": [run, run], "settings": settings, "command": command, "machine": {"commit": commit, "date": "d"}}


def test_merge_keeps_the_other_tasks_rows_and_names_their_commands(tmp_path, monkeypatch):
    monkeypatch.setattr(bc, "RESULTS", tmp_path)
    earlier = {
        "tasks": {
            "lift": _entry(0.98, "python -m benchmarks.bc --tasks lift push", "aaa"),
            "push": _entry(0.6, "python -m benchmarks.bc --tasks lift push", "aaa"),
        }
    }
    (tmp_path / "bc.json").write_text(json.dumps(earlier))
    args, _ = bc.arguments(["--tasks", "push", "--merge"])
    kept = bc.earlier_tasks(args)
    assert list(kept) == ["lift"]
    tasks = kept | {"push": _entry(0.8, bc.command_line(args), "bbb")}
    summary = {
        "tasks": tasks,
        "data_overhead": 1.0,
        "data_overhead_detail": {"task": "push"},
        "machine": {"cpus": 2, "commit": "bbb", "date": "d"},
    }
    table = bc.results_table(summary)
    assert "| lift | 98.0% ± 0.0% | 98%, 98% | 600 s | 200 | 1 |" in table
    assert "| push | 80.0% ± 0.0% | 80%, 80% | 600 s | 200 | 2 |" in table
    assert "1. `python -m benchmarks.bc --tasks lift push` (commit aaa, d)" in table
    assert "--tasks push " in table and "--merge" in table


def test_merge_refuses_a_results_file_without_per_task_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(bc, "RESULTS", tmp_path)
    (tmp_path / "bc.json").write_text(json.dumps({"runs": []}))
    args, _ = bc.arguments(["--tasks", "push", "--merge"])
    with pytest.raises(SystemExit, match="no per-task entries"):
        bc.earlier_tasks(args)


def test_true_positions_column_lines_up_with_merged_rows_that_lack_it():
    args, _ = bc.arguments(["--tasks", "push", "--true-positions"])
    push = _entry(0.8, bc.command_line(args), "bbb")
    push["runs"] = [dict(run, true_positions_success=rate) for run, rate in zip(push["runs"], (0.9, 0.7))]
    summary = {
        "tasks": {"lift": _entry(0.98, "python -m benchmarks.bc --tasks lift", "aaa"), "push": push},
        "true_positions": {"push": 0.8},
        "data_overhead": 1.0,
        "data_overhead_detail": {"task": "push"},
        "machine": {"cpus": 2, "commit": "bbb", "date": "d"},
    }
    table = bc.results_table(summary).splitlines()
    rows = [line for line in table if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1  # header, rule and rows: the same columns
    assert "| push | 80.0% ± 0.0% | 80%, 80% | 80.0% (90%, 70%) | 600 s | 200 | 2 |" in rows
    assert "| lift | 98.0% ± 0.0% | 98%, 98% | - | 600 s | 200 | 1 |" in rows
    assert "--true-positions" in "\n".join(table)


def _finetune_args(**changes):
    import argparse

    settings = {"task": "lift", "modes": ["ibrl", "scratch"], "seeds": 1, "mode_seeds": {}, "steps": 20000}
    settings |= {"keep": None, "label": None, "until": None}
    return argparse.Namespace(**(settings | changes))


def test_finetune_rerun_keeps_the_finished_runs_made_with_the_same_settings(tmp_path, monkeypatch):
    from benchmarks import finetune

    monkeypatch.setattr(finetune, "RESULTS", tmp_path)
    assert finetune.finished_runs(_finetune_args(), "lift") == []  # no results yet
    made = _finetune_args(modes=["ibrl", "scratch"], mode_seeds={"ibrl": 2}, keep="/tmp/x", until=5000)
    runs = [{"mode": "ibrl", "seed": 0}, {"mode": "ibrl", "seed": 1}, {"mode": "scratch", "seed": 0}]
    section = {"settings": {key: str(value) for key, value in vars(made).items()}, "runs": runs}
    (tmp_path / "finetune.json").write_text(json.dumps({"tasks": {"lift": section}}))

    # Which runs a section holds and where they are kept may change; how each run goes may not.
    again = _finetune_args(modes=["ibrl", "rlpd"], seeds=3, keep="/tmp/y", true_positions=True)
    assert finetune.finished_runs(again, "lift") == runs[:2]
    assert finetune.finished_runs(_finetune_args(modes=["ibrl"]), "lift") == runs[:1]
    assert finetune.finished_runs(_finetune_args(), "other-label") == []
    assert finetune.finished_runs(_finetune_args(steps=10000), "lift") == []


def test_finetune_true_positions_columns_line_up(tmp_path, monkeypatch):
    from benchmarks import finetune

    monkeypatch.setattr(finetune, "RESULTS", tmp_path)
    args = finetune.build_parser().parse_args(["--modes", "ibrl", "--seeds", "2", "--true-positions"])
    args.mode_seeds = {}
    run = {"mode": "ibrl", "bc_start": 0.5, "steps_to_90": None, "wall_clock_s": 60.0, "curve": [[0, 0.5], [10, 0.8]]}
    runs = [run | {"seed": 0, "final_success": 0.8}, run | {"seed": 1, "final_success": 0.6}]
    table = finetune.write_results(args, "lift", "recipe", runs, 0.5, 0.7)["tasks"]["lift"]["markdown"]
    assert "True positions:" not in table  # a column only when every run has it
    runs = [runs[0] | {"true_positions_success": 0.9}, runs[1] | {"true_positions_success": 0.95}]
    written = finetune.write_results(args, "lift", "recipe", runs, 0.5, 0.7)
    rows = [line for line in written["tasks"]["lift"]["markdown"].splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1
    assert rows[-1].endswith("| 70% | 90%, 95% |") and written["lift"]["ibrl"]["true_positions_success"] == 0.925


def test_finetune_section_names_the_commits_its_runs_span():
    from benchmarks.finetune import run_commits

    same = [{"mode": "ibrl", "seed": 0, "commit": "abc"}, {"mode": "ibrl", "seed": 1, "commit": "abc"}]
    assert run_commits(same, "abc") == []  # the section's closing line already names it
    mixed = [{"mode": "ibrl", "seed": 0}, {"mode": "ibrl", "seed": 1, "commit": "def"}]
    line = run_commits(mixed, "def")[-1]
    assert "ibrl seed 0: not recorded" in line and "ibrl seed 1: def" in line


def test_source_commit_marks_uncommitted_code_not_results(tmp_path, monkeypatch):
    from benchmarks.common import source_commit

    monkeypatch.delenv("ROBOLEARN_COMMIT", raising=False)

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "robolearn").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "robolearn" / "a.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "t.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    assert source_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "benchmarks" / "results" / "t.md").write_text("new\n")  # results written by a run: still clean
    assert source_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "robolearn" / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == head.stdout.strip() + "-dirty"
