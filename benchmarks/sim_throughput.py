"""Simulation throughput: robolearn's env step against the raw MuJoCo work it needs.

Side by side in one run, on the same task and machine, in interleaved rounds:

- env:  ``RobolearnEnv.step`` with one camera (controller, 25 physics substeps,
        observations, reward, one camera frame);
- raw:  the same compiled model driven by plain ``mujoco.mj_step(nstep=25)`` plus one
        ``Renderer.render`` of the same camera with the same render settings;
- default render settings (shadows, 4x multisampling, 640x480 offscreen buffer), raw,
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

import robolearn  # noqa: F401  (headless GL before mujoco)
from benchmarks.common import machine, write_results
from robolearn.envs import make
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


def time_env(env, actions: list[np.ndarray], seed: int) -> float:
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return len(actions) / (time.perf_counter() - start)


def time_raw(model, data, renderer, camera: int, substeps: int, steps: int) -> float:
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
    env.reset(seed=0)
    mujoco.mj_setState(env.model, raw_data, env.get_state(), mujoco.mjtState.mjSTATE_INTEGRATION)
    env.model.vis.global_.offwidth, env.model.vis.global_.offheight = args.size, args.size
    raw_renderer = mujoco.Renderer(env.model, args.size, args.size)

    default_model = mujoco.MjModel.from_xml_string(env.mjcf_xml)
    default_model.vis.quality.shadowsize, default_model.vis.quality.offsamples = 4096, 4
    default_model.vis.global_.offwidth, default_model.vis.global_.offheight = 640, 480
    default_data = mujoco.MjData(default_model)
    mujoco.mj_setState(default_model, default_data, env.get_state(), mujoco.mjtState.mjSTATE_INTEGRATION)
    default_renderer = mujoco.Renderer(default_model, args.size, args.size)

    # Warm up every path once (first frames allocate GL buffers).
    time_env(env, actions[:20], seed=0)
    time_raw(env.model, raw_data, raw_renderer, camera, env.substeps, 20)
    time_raw(default_model, default_data, default_renderer, camera, env.substeps, 5)

    env_rates, raw_rates, ratios, default_rates = [], [], [], []
    for round_index in range(args.rounds):
        env_rate = time_env(env, actions, seed=round_index)
        raw_rate = time_raw(env.model, raw_data, raw_renderer, camera, env.substeps, len(actions))
        env_rates.append(env_rate)
        raw_rates.append(raw_rate)
        ratios.append(env_rate / raw_rate)
        if round_index < 3:
            default_rates.append(time_raw(default_model, default_data, default_renderer, camera, env.substeps, 60))
        print(f"round {round_index}: env {env_rate:.0f} steps/s, raw {raw_rate:.0f} steps/s, ratio {ratios[-1]:.3f}")

    summary = {
        "benchmark": "sim_throughput",
        "task": args.task,
        "camera": args.camera,
        "image_size": args.size,
        "substeps": env.substeps,
        "steps_per_round": len(actions),
        "rounds": args.rounds,
        "env_steps_per_s": round(statistics.median(env_rates), 1),
        "raw_steps_per_s": round(statistics.median(raw_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        "raw_default_render_steps_per_s": round(statistics.median(default_rates), 1),
        "machine": machine(),
    }
    table = f"""# Simulation throughput

`python benchmarks/sim_throughput.py --task {args.task} --camera {args.camera} --size {args.size}`, \
{args.rounds} interleaved rounds of {len(actions)} control steps (actions from scripted episodes), medians.
One control step = {env.substeps} physics substeps (20 Hz control) + one {args.size}x{args.size} frame.

| what | steps/s |
|---|---|
| robolearn env `step` (controller, physics, observations, reward, 1 camera) | {summary["env_steps_per_s"]} |
| raw MuJoCo: `mj_step(nstep={env.substeps})` + `Renderer.render`, same settings | {summary["raw_steps_per_s"]} |
| raw MuJoCo with default render settings (shadows, 4x MSAA, 640x480 buffer) | {summary["raw_default_render_steps_per_s"]} |

**ratio env / raw: {summary["ratio"]}** (median of per-round ratios; target at least 0.85, and at least 300 env steps/s).

Machine: {summary["machine"]["cpus"]} CPUs, MuJoCo {summary["machine"]["mujoco"]}, \
MUJOCO_GL={summary["machine"]["mujoco_gl"]}, commit {summary["machine"]["commit"]}, {summary["machine"]["date"]}.
"""
    env.close()
    raw_renderer.close()
    default_renderer.close()
    write_results("sim_throughput", summary, table)


if __name__ == "__main__":
    main()
