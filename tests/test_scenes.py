"""Random labelled scenes for the position estimator: labels match the frames' simulator state,
the arm is kept out of the objects, the same seed gives the same scenes, and the cache is reused."""

import json

import numpy as np
import pytest
import torch

from robolearn.data.scenes import CLEARANCE, LOW, cached_scenes, render_scenes
from robolearn.envs import make
from robolearn.envs.task import Task
from robolearn.envs.tasks.stack import Stack

TASK, ENV = {"id": "push", "kwargs": {}}, {"cameras": ["front", "wrist"], "image_size": 32}


def test_scenes_are_labelled_varied_and_reproducible():
    scenes = render_scenes(TASK, ENV, 12, seed=1)
    assert scenes["rgb/front"].shape == (12, 32, 32, 3) and scenes["rgb/front"].dtype == np.uint8
    assert scenes["rgb/wrist"].shape == (12, 32, 32, 3)
    assert scenes["state"].shape == (12, 15) and scenes["privileged"].shape == (12, 13)
    env = make("push", image_size=32)
    state, privileged = env.features.observations["state"], env.features.observations["privileged"]
    env.close()
    gripper = scenes["state"][:, state.slice("gripper_position")]
    cube = scenes["privileged"][:, privileged.slice("cube_position")]
    goal = scenes["privileged"][:, privileged.slice("goal_position")]
    low = gripper[:, 2] < LOW - 0.01
    assert low.any() and (~low).any()  # the arm is seen low and high
    for objects in (cube, goal):
        assert (np.linalg.norm(gripper[low, :2] - objects[low, :2], axis=1) > CLEARANCE - 0.01).all()
    assert len({tuple(np.round(c, 3)) for c in cube}) == 12  # a fresh layout each time
    again = render_scenes(TASK, ENV, 12, seed=1)
    for key in scenes:
        np.testing.assert_array_equal(scenes[key], again[key])
    assert not np.array_equal(render_scenes(TASK, ENV, 12, seed=2)["privileged"], scenes["privileged"])


def test_scenes_are_cached_in_the_dataset_folder(tmp_path):
    first = cached_scenes(tmp_path, TASK, ENV, 4)
    (sidecar,) = (tmp_path / "scenes").glob("*.json")
    assert json.loads(sidecar.read_text())["count"] == 4
    tensors = sidecar.with_suffix(".safetensors")
    stamp = tensors.stat().st_mtime_ns
    second = cached_scenes(tmp_path, TASK, ENV, 4)
    assert tensors.stat().st_mtime_ns == stamp and all(torch.equal(first[k], second[k]) for k in first)
    cached_scenes(tmp_path, TASK, ENV, 5)  # other settings: another file, the first one kept
    assert len(list((tmp_path / "scenes").glob("*.safetensors"))) == 2


def test_operator_scenes_show_the_task_in_motion(tmp_path, monkeypatch):
    """Scenes along the scripted operator's episodes show what random arm poses never do: stack's red
    cube off the table in the fingers. ``both`` is the random scenes' first half, then the operator's."""
    task, env_settings = {"id": "stack", "kwargs": {}}, {"cameras": ["front", "wrist"], "image_size": 32}
    env = make("stack", image_size=32)
    state, privileged = env.features.observations["state"], env.features.observations["privileged"]
    env.close()
    scenes = render_scenes(task, env_settings, 40, source="operator")
    assert scenes["rgb/wrist"].shape == (40, 32, 32, 3) and scenes["privileged"].shape[0] == 40
    red = scenes["privileged"][:, privileged.slice("red_cube_position")]
    gripper = scenes["state"][:, state.slice("gripper_position")]
    held = (red[:, 2] > 0.04) & (np.linalg.norm(red - gripper, axis=1) < 0.03)
    assert held.sum() >= 3  # carried: off the table and between the fingers
    again = render_scenes(task, env_settings, 40, source="operator")
    for key in scenes:
        np.testing.assert_array_equal(scenes[key], again[key])
    both = render_scenes(task, env_settings, 40, source="both")
    random_half = render_scenes(task, env_settings, 20)
    for key in random_half:
        np.testing.assert_array_equal(both[key][:20], random_half[key])
    np.testing.assert_array_equal(both["privileged"][20:], scenes["privileged"][:20])
    with pytest.raises(ValueError, match="random, operator, both"):
        render_scenes(task, env_settings, 4, source="demos")
    monkeypatch.setattr(Stack, "scripted_operator", Task.scripted_operator)  # a user's task without one
    with pytest.raises(ValueError, match="need a task with a scripted operator.*--scene-source random"):
        render_scenes(task, env_settings, 4, source="both")
    monkeypatch.undo()
    cached_scenes(tmp_path, task, env_settings, 4, source="operator")
    cached_scenes(tmp_path, task, env_settings, 4)  # random ones: cached apart
    sidecars = [json.loads(path.read_text()) for path in sorted((tmp_path / "scenes").glob("*.json"))]
    assert [sidecar.get("source", "random") for sidecar in sidecars] == ["operator", "random"]
