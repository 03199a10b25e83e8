"""Simulation throughput: robolearn's env step against the raw MuJoCo work it needs.

Side by side in one run, on the same task and machine, in interleaved rounds:

- env:  ``RobolearnEnv.step`` with one camera (controller, 25 physics substeps,
        observations, reward, one camera frame);
- raw:  the same compiled model driven by plain ``mujoco.mj_step(nstep=25)`` plus one
        ``Renderer.render`` of the same camera with the same render settings;
- MuJoCo's default render settings (shadows, 4x multisampling, fine tessellation, 640x480
  offscreen buffer), raw,
  for context: what the render settings alone are worth in software GL.

Prints one final JSON line with ``env_steps_per_s``, ``raw_steps_per_s`` and ``ratio``
and writes ``benchmarks/results/sim_throughput.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mujoco
import numpy as np

from benchmarks.common import machine, write_results
from robolearn.envs import make
from robolearn.envs.env import STATE_SPEC
from robolearn.envs.operator import ScriptedPolicy


def scripted_actions(env, episodes: int) -> list[np.ndarray]:
    """Actions of real scripted episodes, so the env does realistic work (contacts, grasps)."""
    policy, actions = ScriptedPolicy(env), []
    for seed in range(episodes):
        observation, _ = env.reset(seed=seed)
        policy.reset()
        for _ in range(env.max_steps):
            action = policy.act(observation)
            actions.append(action)
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return actions


def time_chunk(env, actions, raw_data, raw_renderer, camera: int) -> tuple[float, float]:
    """Time ``actions`` through the env, then the identical raw work from the same state.

    The raw loop restores the env's state from before the chunk and replays the servo
    targets the env's controller set, so both do the same physics (checked at the end).
    """
    start_state = env.get_state()
    controls = []
    start = time.perf_counter()
    for action in actions:
        env.step(action)
        controls.append(env.data.ctrl.copy())
    env_seconds = time.perf_counter() - start

    model = env.model
    mujoco.mj_setState(model, raw_data, start_state, STATE_SPEC)
    start = time.perf_counter()
    for control in controls:
        raw_data.ctrl[:] = control
        mujoco.mj_step(model, raw_data, nstep=env.substeps)
        raw_renderer.update_scene(raw_data, camera=camera)
        raw_renderer.render()
    raw_seconds = time.perf_counter() - start
    if not np.array_equal(raw_data.qpos, env.data.qpos):
        raise AssertionError("raw replay diverged from the env: the comparison would not be like for like")
    return env_seconds, raw_seconds


def time_default_render(model, data, renderer, camera: int, substeps: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(model, data, nstep=substeps)
        renderer.update_scene(data, camera=camera)
        renderer.render()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--camera", default="front")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    env = make(args.task, cameras=(args.camera,), image_size=args.size)
    actions = scripted_actions(env, episodes=3)
    camera = env._camera_ids[args.camera]

    raw_data = mujoco.MjData(env.model)
    env.model.vis.global_.offwidth, env.model.vis.global_.offheight = args.size, args.size
    raw_renderer = mujoco.Renderer(env.model, args.size, args.size)

    default_model = mujoco.MjModel.from_xml_string(env.mjcf_xml)
    quality = default_model.vis.quality
    quality.shadowsize, quality.offsamples, quality.numslices, quality.numstacks, quality.numquads = 4096, 4, 28, 16, 4
    default_model.light_castshadow[:] = 1
    default_model.vis.global_.offwidth, default_model.vis.global_.offheight = 640, 480
    default_data = mujoco.MjData(default_model)
    env.reset(seed=0)
    mujoco.mj_setState(default_model, default_data, env.get_state(), STATE_SPEC)
    default_renderer = mujoco.Renderer(default_model, args.size, args.size)

    # Warm up every path once (first frames allocate GL buffers).
    env.reset(seed=0)
    time_chunk(env, actions[:20], raw_data, raw_renderer, camera)
    time_default_render(default_model, default_data, default_renderer, camera, env.substeps, 5)

    # Short interleaved chunks, so load from elsewhere on the machine hits both sides alike.
    chunk = 25
    env_seconds, raw_seconds, ratios, default_rates = 0.0, 0.0, [], []
    for round_index in range(args.rounds):
        env.reset(seed=round_index)
        round_env = round_raw = 0.0
        for begin in range(0, len(actions), chunk):
            seconds = time_chunk(env, actions[begin : begin + chunk], raw_data, raw_renderer, camera)
            round_env += seconds[0]
            round_raw += seconds[1]
        env_seconds += round_env
        raw_seconds += round_raw
        ratios.append(round_raw / round_env)
        if round_index < 3:
            default_rates.append(
                time_default_render(default_model, default_data, default_renderer, camera, env.substeps, 60)
            )
        print(
            f"round {round_index}: env {len(actions) / round_env:.0f} steps/s, "
            f"raw {len(actions) / round_raw:.0f} steps/s, ratio {ratios[-1]:.3f}"
        )
    total_steps = args.rounds * len(actions)

    summary = {
        "benchmark": "sim_throughput",
        "task": args.task,
        "camera": args.camera,
        "image_size": args.size,
        "substeps": env.substeps,
        "steps_per_round": len(actions),
        "rounds": args.rounds,
        "env_steps_per_s": round(total_steps / env_seconds, 1),
        "raw_steps_per_s": round(total_steps / raw_seconds, 1),
        "ratio": round(raw_seconds / env_seconds, 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "raw_default_render_steps_per_s": round(statistics.median(default_rates), 1),
        "machine": machine(),
    }
    table = f"""# Simulation throughput

`python -m benchmarks.sim_throughput --task {args.task} --camera {args.camera} --size {args.size}`, \
{args.rounds} rounds of {len(actions)} control steps (actions from scripted episodes), timed in interleaved chunks of \
{chunk} steps: the env, then the raw loop replaying the same servo targets from the same state (same physics, \
checked bit for bit).
One control step = {env.substeps} physics substeps (20 Hz control) + one {args.size}x{args.size} frame.

| what | steps/s |
|---|---|
| robolearn env `step` (controller, physics, observations, reward, 1 camera) | {summary["env_steps_per_s"]} |
| raw MuJoCo: `mj_step(nstep={env.substeps})` + `Renderer.render`, same settings | {summary["raw_steps_per_s"]} |
| raw MuJoCo with MuJoCo's default render settings (shadows, 4x MSAA, fine tessellation, 640x480 buffer) | {summary["raw_default_render_steps_per_s"]} |

**ratio env / raw: {summary["ratio"]}** (total raw time / total env time; per round: {summary["ratio_per_round"]}). \
Target: at least 0.85, and at least 300 env steps/s.

Machine: {summary["machine"]["cpus"]} CPUs, MuJoCo {summary["machine"]["mujoco"]}, \
MUJOCO_GL={summary["machine"]["mujoco_gl"]}, commit {summary["machine"]["commit"]}, {summary["machine"]["date"]}.
"""
    env.close()
    raw_renderer.close()
    default_renderer.close()
    write_results("sim_throughput", summary, table)


if __name__ == "__main__":
    main()
