"""Dataset tools: replay (states and actions), re-rendering, robomimic export/import, and their bad inputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from robolearn.data import DatasetError, DemoStore
from robolearn.data.replay import ReplayConfig, replay
from robolearn.data.rerender import RenderConfig, render
from robolearn.data.robomimic import ExportConfig, ImportConfig, export, import_
from robolearn.record import RecordConfig, run
from robolearn.train import TrainConfig
from robolearn.train import run as train
from robolearn.video import read_mp4

ROBOLEARN = str(Path(sys.executable).with_name("robolearn"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demos") / "lift"
    return run(RecordConfig(task="lift", episodes=3, out=out, image_size=32, workers=1))


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A copy of the dataset that a test may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def assert_same_episodes(a: DemoStore, b: DemoStore, keys=None) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a.episodes(), b.episodes()):
        arrays_x, arrays_y = x.arrays(), y.arrays()
        for key in keys or arrays_x:
            assert arrays_x[key].dtype == arrays_y[key].dtype, key
            assert np.array_equal(arrays_x[key], arrays_y[key]), key


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ replay
def test_replay_from_states_is_exact_and_films_h264(dataset, tmp_path):
    report = replay(ReplayConfig(dataset, episode=1, video=tmp_path / "replay.mp4", size=64))
    assert report["mode"] == "states" and report["observations_match"]
    assert set(report["observation_difference"]) == {"state", "privileged"}
    assert all(value == 0 for value in report["observation_difference"].values())
    frames, meta = read_mp4(tmp_path / "replay.mp4")
    assert meta["codec"] == "h264"
    assert frames.shape == (report["steps"] + 1, 64, 64, 3) and frames.std() > 5


def test_replay_from_actions_reports_drift_zero_for_our_simulator(dataset):
    report = replay(ReplayConfig(dataset, episode=0, from_actions=True))
    assert report["mode"] == "actions" and report["drift_of"] == "qpos"
    assert report["max_drift"] == 0.0 and report["final_drift"] == 0.0
    assert report["success_matches"] and report["success_stored"] and report["success_replayed"]
    assert report["max_reward_difference"] == 0.0


# ------------------------------------------------------------------------------------------ render
def test_render_makes_new_cameras_from_the_stored_states(dataset, tmp_path):
    before = files(dataset)
    out = render(RenderConfig(dataset, out=tmp_path / "wrist40", cameras=("wrist", "view"), size=40))
    source, rendered = DemoStore(dataset), DemoStore(out)
    assert rendered.meta["cameras"] == ["wrist", "view"] and rendered.meta["env"]["image_size"] == 40
    assert_same_episodes(source, rendered, ["actions", "states", "rewards", "successes", "info"])
    assert_same_episodes(source, rendered, ["obs/state", "obs/privileged"])
    episode = rendered.load(0)
    assert set(episode.observations) == {"state", "privileged", "rgb/wrist", "rgb/view"}
    assert episode.observations["rgb/view"].shape == (len(episode), 40, 40, 3)
    assert episode.observations["rgb/view"].std() > 5
    assert files(dataset) == before  # the source is only read
    assert not list(tmp_path.glob(".*partial"))


def test_render_refuses_the_source_and_a_non_empty_folder(dataset, tmp_path):
    before = files(dataset)
    with pytest.raises(DatasetError, match="inside the source"):
        render(RenderConfig(dataset, out=dataset))
    with pytest.raises(DatasetError, match="inside the source"):
        render(RenderConfig(dataset, out=dataset / "rendered"))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        render(RenderConfig(dataset, out=occupied))
    assert files(occupied) == {"notes.txt": b"mine"} and files(dataset) == before


# ------------------------------------------------------------------------------------------ robomimic
def test_export_writes_robomimic_layout(dataset, tmp_path):
    path = export(ExportConfig(dataset, tmp_path / "lift.hdf5"))
    store = DemoStore(dataset)
    episode = store.load(0)
    with h5py.File(path, "r") as file:
        data = file["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "lift" and env_args["type"] == "robolearn"
        assert env_args["env_kwargs"] == store.meta["env"] and env_args["robolearn_meta"] == store.meta
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        assert data.attrs["total"] == sum(len(e) for e in store.episodes())
        demo = data["demo_0"]
        steps = len(episode)
        assert demo.attrs["num_samples"] == steps
        assert demo["actions"].shape == (steps, 5) and demo["rewards"].shape == (steps,)
        assert np.array_equal(demo["states"][()], episode.states[:-1])
        assert demo["dones"][()].tolist() == [0] * (steps - 1) + [1]
        assert sorted(demo["obs"]) == ["privileged", "rgb_front", "rgb_wrist", "state"]
        assert demo["obs/rgb_front"].dtype == np.uint8 and demo["obs/rgb_front"].shape == (steps, 32, 32, 3)
        next_state = demo["next_obs/state"][()]
        assert np.array_equal(next_state[:-1], episode.observations["state"][1:])
        assert json.loads(demo.attrs["ep_info"]) == episode.info


def test_export_import_round_trip_is_identical(dataset, tmp_path):
    path = export(ExportConfig(dataset, tmp_path / "lift.hdf5"))
    out = import_(ImportConfig(path, out=tmp_path / "back"))
    source, back = DemoStore(dataset), DemoStore(out)
    assert back.meta == source.meta
    assert (out / "model.xml").read_bytes() == (dataset / "model.xml").read_bytes()
    assert_same_episodes(source, back)


def test_import_of_a_foreign_file_without_and_with_a_task(dataset, tmp_path):
    foreign = export(ExportConfig(dataset, tmp_path / "foreign.hdf5"))
    with h5py.File(foreign, "a") as file:  # as another tool would write it: no robolearn additions
        file["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for demo in file["data"].values():
            del demo["final_state"], demo["successes"]
        del file["robolearn"]
    source = DemoStore(dataset)

    taskless = DemoStore(import_(ImportConfig(foreign, out=tmp_path / "taskless")))
    assert taskless.meta["task"]["id"] is None
    episode, original = taskless.load(0), source.load(0)
    assert np.array_equal(episode.observations["rgb/front"], original.observations["rgb/front"])
    assert np.array_equal(episode.states[:-1], original.states[:-1]) and np.isnan(episode.states[-1]).all()
    with pytest.raises(DatasetError, match="no task"):
        replay(ReplayConfig(taskless.root))

    attached = DemoStore(import_(ImportConfig(foreign, out=tmp_path / "attached", task="lift")))
    assert attached.meta["task"]["id"] == "lift"
    assert_same_episodes(source, attached, ["actions", "states", "rewards", "successes", "obs/state", "obs/rgb/wrist"])


# ------------------------------------------------------------------------------------------ bad input
def test_a_damaged_episode_file_is_a_clear_error_and_nothing_is_written(copy, tmp_path):
    episode_file = copy / "episodes" / "episode_000001.npz"
    episode_file.write_bytes(episode_file.read_bytes()[:5000])  # truncated, as by a full disk
    for call in (
        lambda: replay(ReplayConfig(copy, episode=1)),
        lambda: render(RenderConfig(copy, out=tmp_path / "rendered")),
        lambda: export(ExportConfig(copy, tmp_path / "out.hdf5")),
        lambda: train(TrainConfig(copy, out=tmp_path / "policy", steps=1)),
    ):
        with pytest.raises(DatasetError, match=r"episode_000001\.npz: damaged.*robolearn verify"):
            call()
    assert not (tmp_path / "rendered").exists() and not (tmp_path / "out.hdf5").exists()
    assert not (tmp_path / "policy").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_a_newer_format_version_is_a_clear_error(dataset, copy, tmp_path):
    meta = json.loads((copy / "meta.json").read_text())
    meta["format_version"] = 99
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"meta\.json: format_version 99 is newer.*upgrade"):
        replay(ReplayConfig(copy))

    path = export(ExportConfig(dataset, tmp_path / "new.hdf5", next_obs=False))
    with h5py.File(path, "a") as file:
        env_args = json.loads(file["data"].attrs["env_args"])
        env_args["robolearn_meta"]["format_version"] = 99
        file["data"].attrs["env_args"] = json.dumps(env_args)
    with pytest.raises(DatasetError, match=r"new\.hdf5.*robolearn_meta.*format_version 99 is newer"):
        import_(ImportConfig(path, out=tmp_path / "imported"))
    assert not (tmp_path / "imported").exists()


def test_a_task_that_is_not_installed_is_a_clear_error(copy, tmp_path):
    meta = json.loads((copy / "meta.json").read_text())
    meta["task"]["id"] = "pour_tea"
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"task 'pour_tea' is not installed here.*envs/.*--task"):
        replay(ReplayConfig(copy))
    with pytest.raises(DatasetError, match=r"task 'pour_tea' is not installed here"):
        render(RenderConfig(copy, out=tmp_path / "rendered"))
    assert not (tmp_path / "rendered").exists()
    # naming the task file (here: the built-in id) is the fix
    assert replay(ReplayConfig(copy, task="lift"))["observations_match"]


def _robomimic_file(path: Path, actions: np.ndarray | None) -> Path:
    with h5py.File(path, "w") as file:
        demo = file.create_group("data/demo_0")
        if actions is not None:
            demo["actions"] = actions
        demo["rewards"] = np.zeros(len(actions) if actions is not None else 4)
        demo["obs/robot0_eef_pos"] = np.zeros((4, 3))
        demo["obs/agentview_image"] = np.zeros((4, 16, 16, 3), np.uint8)
    return path


def test_import_without_actions_is_a_clear_error(tmp_path):
    path = _robomimic_file(tmp_path / "no_actions.hdf5", None)
    with pytest.raises(DatasetError, match=r"no_actions\.hdf5: data/demo_0: key 'actions' is missing"):
        import_(ImportConfig(path, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_import_with_nan_actions_is_a_clear_error(tmp_path):
    actions = np.zeros((4, 7))
    actions[2, 1] = np.nan
    path = _robomimic_file(tmp_path / "nan.hdf5", actions)
    with pytest.raises(DatasetError, match=r"nan\.hdf5: data/demo_0/actions holds NaN or inf at step 2"):
        import_(ImportConfig(path, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    good = _robomimic_file(tmp_path / "good.hdf5", np.zeros((4, 7)))
    episode = DemoStore(import_(ImportConfig(good, out=tmp_path / "out"))).load(0)
    assert set(episode.observations) == {"state", "rgb/agentview"}


# ------------------------------------------------------------------------------------------ CLI
def test_cli_replay_render_export_import(dataset, tmp_path):
    def robolearn(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ROBOLEARN, *args], capture_output=True, text=True, timeout=120)

    result = robolearn("replay", str(dataset), "--from-actions", "--episode", "2")
    assert result.returncode == 0, result.stderr
    assert "qpos drift" in result.stdout and "matches" in result.stdout
    result = robolearn("render", str(dataset), "--out", str(tmp_path / "r"), "--cameras", "front", "--size", "24")
    assert result.returncode == 0, result.stderr
    assert DemoStore(tmp_path / "r").load(0).observations["rgb/front"].shape[1:] == (24, 24, 3)
    result = robolearn("export", str(dataset), str(tmp_path / "d.hdf5"), "--no-next-obs")
    assert result.returncode == 0, result.stderr
    result = robolearn("import", str(tmp_path / "d.hdf5"), "--out", str(tmp_path / "back"))
    assert result.returncode == 0, result.stderr
    assert len(DemoStore(tmp_path / "back")) == 3
    result = robolearn("import", str(tmp_path / "d.hdf5"), "--out", str(tmp_path / "back"))
    assert result.returncode == 2 and "robolearn import: error:" in result.stderr and "not empty" in result.stderr
