"""Random labelled scenes for the position estimator: labels match the frames' simulator state,
the arm is kept out of the objects, the same seed gives the same scenes, and the cache is reused."""

import json

import numpy as np
import torch

from robolearn.data.scenes import CLEARANCE, LOW, cached_scenes, render_scenes
from robolearn.envs import make

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
