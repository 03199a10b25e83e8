"""Random scenes of a task, rendered with their simulator labels, for perception losses.

Fifty demonstrations show a policy fifty scenes. Where the objects are in a frame is what a
manipulation policy must read from its pixels, and a position estimator fitted on fifty scenes
does not generalise (``benchmarks/results/bc_gpu_sweep.md``). The simulator can draw any
number of new scenes for free: each one here is the task's own initial-state distribution
(``env.reset`` with a fresh seed) with the arm moved to a random pose in its workspace, so the
arm is seen low, high, open, closed and in front of the objects. A scene is one frame per
camera with the proprioceptive state and the privileged state (object positions) as labels.

Random arm poses never show what the task's own motions show: a cube held in the fingers above
another, the gripper hiding what it is about to touch. ``source="operator"`` draws the scenes from
the task's scripted operator instead, knocked off course now and then (``OPERATOR_PERTURB``), one
frame every ``OPERATOR_STRIDE`` steps of its episodes; ``"both"`` takes half of each.

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
SOURCES = ("random", "operator", "both")
"""Where scenes come from: random arm poses, the scripted operator's episodes, or half of each."""
OPERATOR_STRIDE = 4
"""Steps of an operator episode between two of its scenes (consecutive frames are near copies)."""
OPERATOR_AFTER_SUCCESS = 10
"""Steps an operator episode runs on after its first success (as ``robolearn record`` keeps them)."""
OPERATOR_PERTURB = 0.05
"""Chance per step that the operator is knocked off course (``ScriptedPolicy``): scenes off its path."""


def arm_pose(rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """A random gripper position, yaw and finger opening clear of ``objects`` (world positions)."""
    high = np.array([WORKSPACE_HIGH[0], WORKSPACE_HIGH[1], 0.25])
    while True:
        position = rng.uniform(WORKSPACE_LOW, high)
        clear = all(np.linalg.norm(position[:2] - p[:2]) > CLEARANCE for p in objects)
        if position[2] > LOW or clear:
            return position, float(rng.uniform(-YAW_LIMIT, YAW_LIMIT)), float(rng.uniform(0.0, 1.0))


def render_scenes(
    task: dict, env_settings: dict, count: int, seed: int = 0, source: str = "random"
) -> dict[str, np.ndarray]:
    """``count`` scenes of a robolearn task from ``source`` (``SOURCES``): ``rgb/<camera>`` (N, H, W, 3)
    uint8, ``state`` and ``privileged`` (N, size) float32. The same arguments give the same scenes."""
    if source not in SOURCES:
        raise ValueError(f"scenes come from one of {', '.join(SOURCES)}; found {source!r}")
    env = make(task["id"], task_kwargs=task.get("kwargs") or None, **env_settings)
    if not hasattr(env, "physics") or "privileged" not in env.features.observations:
        env.close()
        raise ValueError(f"scenes need a robolearn task with a privileged state to label them; {task['id']!r} has none")
    from_operator = {"random": 0, "operator": count, "both": count // 2}[source]
    observations = []
    try:
        observations += _random_scenes(env, count - from_operator, seed)
        if from_operator:  # the operator's episodes play out without cameras; only their kept states render
            stepper = make(task["id"], task_kwargs=task.get("kwargs") or None, **(env_settings | {"cameras": ()}))
            try:
                observations += _operator_scenes(stepper, env, from_operator, seed)
            finally:
                stepper.close()
    finally:
        env.close()
    keys = [key for key in observations[0] if key.startswith("rgb/")]
    scenes = {key: np.stack([o[key] for o in observations]) for key in keys}
    return scenes | {
        key: np.stack([o[key] for o in observations]).astype(np.float32) for key in ("state", "privileged")
    }


def _random_scenes(env, count: int, seed: int) -> list[dict]:
    """Observations of ``count`` fresh layouts with the arm placed at random, clear of the objects."""
    positions = env.features.observations["privileged"].indices("position")
    rng = np.random.default_rng(seed)
    observations = []
    for i in range(count):
        observation, _ = env.reset(seed=SCENE_SEED_START + seed * count + i)
        objects = [observation["privileged"][positions[j : j + 3]] for j in range(0, len(positions), 3)]
        position, yaw, opening = arm_pose(rng, objects)
        env.physics.arm.place(env.data, position, yaw=yaw, opening=opening)
        observations.append(env.set_state(env.get_state()))  # forward kinematics and the observation there
    return observations


def _operator_scenes(stepper, env, count: int, seed: int) -> list[dict]:
    """``env``'s observations every ``OPERATOR_STRIDE`` steps of the scripted operator's perturbed episodes,
    played out in ``stepper`` (the same task without cameras)."""
    from robolearn.envs.operator import ScriptedPolicy

    try:
        stepper.task.scripted_operator(np.random.default_rng(0))
    except NotImplementedError:
        raise ValueError(
            f"scenes from the operator need a task with a scripted operator; {stepper.task.name!r} has none: "
            "use --scene-source random"
        ) from None
    operator = ScriptedPolicy(stepper, perturb=OPERATOR_PERTURB)
    observations, episode = [], 0
    while len(observations) < count:  # seeds of their own, a million past the random scenes' first
        stepper.reset(seed=SCENE_SEED_START + 1_000_000 + seed * 100_000 + episode)
        operator.reset()
        episode += 1
        after_success = None  # steps since the first success
        for step in range(stepper.max_steps):
            if step % OPERATOR_STRIDE == 0:
                observations.append(env.set_state(stepper.get_state()))
                if len(observations) == count:
                    break
            _, _, terminated, truncated, info = stepper.step(operator.act())
            if after_success is None and info["is_success"]:
                after_success = 0
            elif after_success is not None:
                after_success += 1
            if terminated or truncated or after_success == OPERATOR_AFTER_SUCCESS:
                break
    return observations


def cached_scenes(
    dataset: Path, task: dict, env_settings: dict, count: int, seed: int = 0, source: str = "random"
) -> dict[str, torch.Tensor]:
    """``render_scenes``, cached in ``<dataset>/scenes/`` (rendered on first use, about 10 ms a scene)."""
    settings = {"task": task, "env": env_settings, "count": count, "seed": seed}
    if source != "random":  # the settings random scenes were always cached under
        settings["source"] = source
    folder = Path(dataset) / "scenes"
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        if json.loads(sidecar.read_text()) == json.loads(json.dumps(settings)):
            return checkpoint.load_weights(sidecar.with_suffix(".safetensors"))
    folder.mkdir(exist_ok=True)
    rendered = render_scenes(task, env_settings, count, seed, source)
    scenes = {key: torch.from_numpy(value) for key, value in rendered.items()}
    name = f"scenes-{count}-{seed}-{len(list(folder.glob('*.json')))}"
    checkpoint.save_weights(folder / f"{name}.safetensors", scenes)
    atomic_write_json(folder / f"{name}.json", settings)  # written last: a sidecar means the tensors are whole
    return scenes
