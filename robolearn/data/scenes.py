"""Random scenes of a task, rendered with their simulator labels, for perception losses.

Fifty demonstrations show a policy fifty scenes. Where the objects are in a frame is what a
manipulation policy must read from its pixels, and a position estimator fitted on fifty scenes
does not generalise (``benchmarks/results/bc_gpu_sweep.md``). The simulator can draw any
number of new scenes for free: each one here is the task's own initial-state distribution
(``env.reset`` with a fresh seed) with the arm moved to a random pose in its workspace, so the
arm is seen low, high, open, closed and in front of the objects. A scene is one frame per
camera with the proprioceptive state and the privileged state (object positions) as labels.

Scenes are rendered once per dataset and cached in ``<dataset>/scenes/`` as safetensors
(uint8 frames, float32 states) with a JSON sidecar naming the settings; training loads them
onto its device like the demonstrations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from robolearn import checkpoint
from robolearn.data.store import atomic_write_json
from robolearn.envs import make
from robolearn.envs.arm import WORKSPACE_HIGH, WORKSPACE_LOW, YAW_LIMIT

SCENE_SEED_START = 2_000_000_000
"""Scene seeds start here, far from the seeds of recorded and evaluation episodes."""
CLEARANCE = 0.05
"""Metres (in xy) the fingers are kept from every object when placed below ``LOW``, so the arm
is not drawn inside a cube."""
LOW = 0.08
"""Height (m) of the gripper centre below which ``CLEARANCE`` applies."""


def arm_pose(rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """A random gripper position, yaw and finger opening clear of ``objects`` (world positions)."""
    high = np.array([WORKSPACE_HIGH[0], WORKSPACE_HIGH[1], 0.25])
    while True:
        position = rng.uniform(WORKSPACE_LOW, high)
        clear = all(np.linalg.norm(position[:2] - p[:2]) > CLEARANCE for p in objects)
        if position[2] > LOW or clear:
            return position, float(rng.uniform(-YAW_LIMIT, YAW_LIMIT)), float(rng.uniform(0.0, 1.0))


def render_scenes(task: dict, env_settings: dict, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` random scenes of a robolearn task: ``rgb/<camera>`` (N, H, W, 3) uint8, ``state`` and
    ``privileged`` (N, size) float32. The same arguments give the same scenes."""
    env = make(task["id"], task_kwargs=task.get("kwargs") or None, **env_settings)
    if not hasattr(env, "physics") or "privileged" not in env.features.observations:
        env.close()
        raise ValueError(
            f"random scenes need a robolearn task with a privileged state to label them; {task['id']!r} has none"
        )
    privileged = env.features.observations["privileged"]
    positions = privileged.indices("position")
    rng = np.random.default_rng(seed)
    frames: dict[str, list[np.ndarray]] = {f"rgb/{camera}": [] for camera in env.cameras}
    states, labels = [], []
    try:
        for i in range(count):
            observation, _ = env.reset(seed=SCENE_SEED_START + seed * count + i)
            objects = [observation["privileged"][positions[j : j + 3]] for j in range(0, len(positions), 3)]
            position, yaw, opening = arm_pose(rng, objects)
            env.physics.arm.place(env.data, position, yaw=yaw, opening=opening)
            observation = env.set_state(env.get_state())  # forward kinematics and the observation there
            for key in frames:
                frames[key].append(observation[key])
            states.append(observation["state"])
            labels.append(observation["privileged"])
    finally:
        env.close()
    scenes = {key: np.stack(value) for key, value in frames.items()}
    return scenes | {"state": np.stack(states).astype(np.float32), "privileged": np.stack(labels).astype(np.float32)}


def cached_scenes(dataset: Path, task: dict, env_settings: dict, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``render_scenes``, cached in ``<dataset>/scenes/`` (rendered on first use, about 10 ms a scene)."""
    settings = {"task": task, "env": env_settings, "count": count, "seed": seed}
    folder = Path(dataset) / "scenes"
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        if json.loads(sidecar.read_text()) == json.loads(json.dumps(settings)):
            return checkpoint.load_weights(sidecar.with_suffix(".safetensors"))
    folder.mkdir(exist_ok=True)
    scenes = {key: torch.from_numpy(value) for key, value in render_scenes(task, env_settings, count, seed).items()}
    name = f"scenes-{count}-{seed}-{len(list(folder.glob('*.json')))}"
    checkpoint.save_weights(folder / f"{name}.safetensors", scenes)
    atomic_write_json(folder / f"{name}.json", settings)  # written last: a sidecar means the tensors are whole
    return scenes
