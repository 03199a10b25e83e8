"""Recording throughput: headless scripted recording against the bare env step rate, and live-viewer timing.

Side by side in one run, on the same task, seeds and cameras:

- env:        scripted episodes through ``rollout`` (controller, physics, cameras), nothing stored;
- record:     ``robolearn record --device scripted`` in one process (the same episodes, plus
              episode assembly and an atomic fsynced write per episode), with and without images;
- parallel:   the same recording with one worker per free core;
- viewer:     a live MuJoCo viewer session under Xvfb at 20 Hz driven by the keyboard device,
              reporting the share of late control ticks (needs Xvfb; skipped without it).

Prints one final JSON line (``record_steps_per_s``, ``record_steps_per_s_no_images``,
``env_steps_per_s``, ``late_tick_fraction``) and writes ``benchmarks/results/record_throughput.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, machine_line, write_results
from robolearn.data import DemoStore
from robolearn.envs import make
from robolearn.envs.operator import ScriptedPolicy
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.rollout import rollout
from robolearn.teleop.xvfb import NoDisplayServer, virtual_display


def env_rate(task: str, cameras: tuple[str, ...], size: int, episodes: int) -> float:
    env = make(task, cameras=cameras, image_size=size)
    policy = ScriptedPolicy(env)
    steps, start = 0, time.perf_counter()
    for seed in range(episodes):
        steps += rollout(env, policy, seed, stop_on_success=True, steps_after_success=10).steps
    env.close()
    return steps / (time.perf_counter() - start)


def record_rate(task: str, folder: Path, episodes: int, workers: int, **kwargs) -> tuple[float, float]:
    """Steps per second and seconds per saved episode (write time included)."""
    start = time.perf_counter()
    record(RecordConfig(task=task, out=folder, episodes=episodes, workers=workers, **kwargs))
    seconds = time.perf_counter() - start
    steps = sum(info["steps"] for info in DemoStore(folder).episode_infos())
    return steps / seconds, seconds / episodes


def viewer_late_ticks(seconds: float, task: str = "reach") -> dict | None:
    """Drive a real keyboard session in the live viewer under Xvfb and read its control-loop summary."""
    if seconds <= 0 or not shutil.which("xdotool"):
        return None
    try:
        with virtual_display() as display, tempfile.TemporaryDirectory() as folder:
            env = os.environ | {"DISPLAY": display, "MUJOCO_GL": "glfw"}
            command = [str(Path(sys.executable).with_name("robolearn")), "record", "--task", task]
            command += ["--device", "keyboard", "--out", f"{folder}/demos", "--episodes", "100", "--keep", "all"]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

            def xdotool(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=30)

            deadline = time.monotonic() + 60
            while not (windows := xdotool("search", "--name", "MuJoCo").stdout.split()):
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    return None
                time.sleep(0.2)
            xdotool("windowfocus", "--sync", windows[0])
            start, keys = time.monotonic(), ["Up", "Left", "Down", "Right", "Page_Up", "Page_Down", "z", "x"]
            for index in itertools.count():
                if time.monotonic() - start > seconds:
                    break
                xdotool("keydown", keys[index % len(keys)])
                time.sleep(0.6)
                xdotool("keyup", keys[index % len(keys)])
            xdotool("key", "Escape")
            output = process.communicate(timeout=120)[0]
    except NoDisplayServer:
        return None
    match = re.search(r"control loop: (\d+) ticks at ([\d.]+) Hz, (\d+) late", output)
    if not match:
        print(output[-2000:])
        return None
    ticks, rate, late = int(match.group(1)), float(match.group(2)), int(match.group(3))
    return {"task": task, "ticks": ticks, "rate_hz": rate, "late_ticks": late, "late_tick_fraction": late / ticks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--viewer-seconds", type=float, default=20.0)
    args = parser.parse_args()
    cameras = ("front", "wrist")

    folder = Path(tempfile.mkdtemp(prefix="robolearn-bench-"))
    try:
        rates = {"env": env_rate(args.task, cameras, args.size, args.episodes)}
        rates["record"], per_episode = record_rate(args.task, folder / "images", args.episodes, 1, image_size=args.size)
        rates["record_no_images"], _ = record_rate(args.task, folder / "no_images", args.episodes, 1, no_images=True)
        rates["env_no_images"] = env_rate(args.task, (), args.size, args.episodes)
        rates["record_parallel"], _ = record_rate(
            args.task, folder / "parallel", args.episodes, 0, image_size=args.size
        )
        disk = sum(p.stat().st_size for p in (folder / "images").rglob("*.npz")) / args.episodes
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    viewer = viewer_late_ticks(args.viewer_seconds)

    summary = {
        "benchmark": "record_throughput",
        "task": args.task,
        "episodes": args.episodes,
        "cameras": list(cameras),
        "image_size": args.size,
        "record_steps_per_s": round(rates["record"], 1),
        "record_steps_per_s_no_images": round(rates["record_no_images"], 1),
        "record_steps_per_s_parallel": round(rates["record_parallel"], 1),
        "env_steps_per_s": round(rates["env"], 1),
        "env_steps_per_s_no_images": round(rates["env_no_images"], 1),
        "record_vs_env": round(rates["record"] / rates["env"], 3),
        "seconds_per_episode_recorded": round(per_episode, 3),
        "episode_file_mib": round(disk / 2**20, 2),
        "late_tick_fraction": viewer["late_tick_fraction"] if viewer else None,
        "viewer": viewer,
        "machine": machine(),
    }
    viewer_row = (
        f"| live viewer under Xvfb, `{viewer['task']}`, keyboard held by xdotool, {viewer['rate_hz']:g} Hz, "
        f"{args.viewer_seconds:.0f} s | "
        f"{viewer['ticks']} ticks, {viewer['late_ticks']} late: **{viewer['late_tick_fraction']:.2%}** (target under 1%) |"
        if viewer
        else "| live viewer | not measured (robolearn.teleop or Xvfb unavailable) |"
    )
    table = f"""# Recording throughput

`python -m benchmarks.record_throughput --task {args.task} --episodes {args.episodes} --size {args.size}`:
{args.episodes} scripted episodes (seeds 0..{args.episodes - 1}), cameras {", ".join(cameras)} at {args.size}x{args.size},
each episode ending 10 steps after success. All rows in one run.

| what | env steps/s |
|---|---|
| env alone (scripted rollouts, cameras on, nothing stored) | {summary["env_steps_per_s"]} |
| `robolearn record`, 1 process, images stored | {summary["record_steps_per_s"]} |
| env alone, no cameras | {summary["env_steps_per_s_no_images"]} |
| `robolearn record --no-images`, 1 process | {summary["record_steps_per_s_no_images"]} |
| `robolearn record`, one worker per free core, images stored | {summary["record_steps_per_s_parallel"]} |

Recording with images runs at {summary["record_vs_env"]:.2f} of the bare env rate; one episode
({summary["episode_file_mib"]} MiB) takes {summary["seconds_per_episode_recorded"]:.2f} s to run and save,
the atomic write itself a small part of it.

| live teleoperation | result |
|---|---|
{viewer_row}

{machine_line(summary["machine"], mujoco=True)}
"""
    write_results("record_throughput", summary, table)


if __name__ == "__main__":
    main()
