"""The episode store: exact round trips, resuming, crash safety (SIGKILL at random moments), verify and repair."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data import DatasetError, DemoStore
from robolearn.data.inspect import InfoConfig, VerifyConfig, info, summary, verify
from robolearn.envs import make
from robolearn.record import RecordConfig, run

ROBOLEARN = str(Path(sys.executable).with_name("robolearn"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "lift"
    run(RecordConfig(task="lift", out=out, episodes=3, image_size=32, workers=1))
    return out


def test_recorded_episodes_replay_exactly(dataset):
    store = DemoStore(dataset)
    assert len(store) == 3
    env = make("lift", cameras=("front", "wrist"), image_size=32)
    for index, episode in enumerate(store.episodes()):
        assert episode.success and episode.info["device"] == "scripted" and episode.info["seed"] == index
        observation, _ = env.reset(seed=episode.info["seed"])
        np.testing.assert_array_equal(env.get_state(), episode.states[0])
        for t, action in enumerate(episode.actions):
            for key, value in observation.items():
                np.testing.assert_array_equal(value, episode.observations[key][t], err_msg=key)
            observation, reward, *_ = env.step(action)
            np.testing.assert_array_equal(env.get_state(), episode.states[t + 1])
            assert np.float32(reward) == episode.rewards[t]


def test_metadata_describes_the_dataset(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["task"]["id"] == "lift"
    assert meta["env"] == {"cameras": ["front", "wrist"], "image_size": 32}
    assert meta["features"]["observations"]["rgb/wrist"]["shape"] == [32, 32, 3]
    assert meta["control_rate"] == 20 and meta["versions"]["mujoco"]
    assert (dataset / "model.xml").read_text().startswith("<mujoco")


def test_resume_continues_numbering_and_seeds(dataset, tmp_path):
    copy = tmp_path / "lift"
    subprocess.run(["cp", "-r", str(dataset), str(copy)], check=True)
    run(RecordConfig(task="lift", out=copy, episodes=2, image_size=32, workers=1))
    store = DemoStore(copy)
    assert [p.name for p in store.episode_paths()] == [f"episode_{i:06d}.npz" for i in range(5)]
    assert [i["seed"] for i in store.episode_infos()] == [0, 1, 2, 3, 4]


def test_appending_with_other_settings_is_refused(dataset):
    before = sorted(p.name for p in (dataset / "episodes").iterdir())
    with pytest.raises(DatasetError, match="differs"):
        run(RecordConfig(task="lift", out=dataset, episodes=1, image_size=48, workers=1))
    with pytest.raises(DatasetError, match="differs"):
        run(RecordConfig(task="reach", out=dataset, episodes=1, image_size=32, workers=1))
    assert sorted(p.name for p in (dataset / "episodes").iterdir()) == before


def test_parallel_recording_writes_in_seed_order(tmp_path):
    run(RecordConfig(task="reach", out=tmp_path / "reach", episodes=4, no_images=True, workers=2))
    store = DemoStore(tmp_path / "reach")
    assert [i["seed"] for i in store.episode_infos()] == [0, 1, 2, 3]
    assert store.meta["images"] is False and "rgb/front" not in store.load(0).observations


def test_a_worker_that_dies_is_reported_at_once():
    import multiprocessing

    from robolearn.record import _next_result

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    crashed = context.Process(target=sys.exit, args=(3,))  # as a worker that fails while starting up
    crashed.start()
    crashed.join()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3 before its episodes were done.*--workers 1"):
        _next_result(results, [crashed], patience=60)
    assert time.monotonic() - start < 5  # not after the no-progress timeout
    results.put((7, "episode"))
    assert _next_result(results, [crashed]) == (7, "episode")  # what finished is read before any failure


def test_info_summarises(dataset, capsys):
    result = info(InfoConfig(dataset))
    assert result["episodes"] == 3 and result["success_rate"] == 1.0
    assert result["cameras"] == {"front": [32, 32, 3], "wrist": [32, 32, 3]}
    assert "episode length" in capsys.readouterr().out


def test_verify_finds_and_quarantines_damage(dataset, tmp_path):
    copy = tmp_path / "lift"
    subprocess.run(["cp", "-r", str(dataset), str(copy)], check=True)
    victim = copy / "episodes" / "episode_000001.npz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated, as by a full disk
    (copy / "episodes" / ".episode_000003.npz.partial").write_bytes(b"half")
    with pytest.raises(DatasetError, match="episode_000001.npz: damaged"):
        DemoStore(copy).load(1)
    assert verify(VerifyConfig(copy)) == 1
    assert victim.exists()  # without --repair nothing moves
    assert verify(VerifyConfig(copy, repair=True)) == 0
    assert sorted(p.name for p in (copy / "quarantine").iterdir()) == [".episode_000003.npz.partial", victim.name]
    assert [len(e) for e in DemoStore(copy).episodes()] == [len(DemoStore(dataset).load(i)) for i in (0, 2)]
    assert verify(VerifyConfig(copy)) == 0


def test_newer_format_is_refused(dataset, tmp_path):
    copy = tmp_path / "lift"
    subprocess.run(["cp", "-r", str(dataset), str(copy)], check=True)
    meta = json.loads((copy / "meta.json").read_text())
    meta["format_version"] = 99
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format_version 99 is newer.*upgrade"):
        DemoStore(copy)


def test_sigkill_at_random_moments_loses_at_most_the_episode_in_progress(tmp_path):
    out = tmp_path / "crash"
    command = [ROBOLEARN, "record", "--task", "reach", "--out", str(out), "--episodes", "400"]
    command += ["--image-size", "24", "--workers", "1"]
    rng = random.Random(0)

    def committed() -> int:
        return len(DemoStore(out).episode_paths()) if (out / "meta.json").exists() else 0

    counts = []
    for _ in range(12):
        before = committed()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill only once this process is recording (it committed an episode), however long a loaded
        # machine takes to start it; then at a random moment: mid-episode, mid-write or in between.
        deadline = time.monotonic() + 180
        while committed() <= before:
            assert process.poll() is None, "the recorder exited before recording anything"
            assert time.monotonic() < deadline, "the recorder committed no episode within 180 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = DemoStore(out)
        paths = store.episode_paths()
        assert [p.name for p in paths] == [f"episode_{i:06d}.npz" for i in range(len(paths))]  # no gaps
        episodes = list(store.episodes())  # every committed episode loads and is consistent
        assert len({e.info["seed"] for e in episodes}) == len(episodes)  # resuming never repeats a seed
        counts.append(len(paths))
    assert counts == sorted(counts) and counts[0] > 0  # nothing committed was ever lost
    result = subprocess.run([ROBOLEARN, "verify", str(out), "--repair"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(DemoStore(out)) == counts[-1]


def test_ctrl_c_stops_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        [ROBOLEARN, "record", "--task", "reach", "--out", str(out), "--episodes", "400", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "episodes").is_dir() or not DemoStore_len(out):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopped by Ctrl-C" in stdout
    assert "Traceback" not in stderr
    assert not list((out / "episodes").glob(".*partial"))
    list(DemoStore(out).episodes())


def DemoStore_len(path: Path) -> int:
    try:
        return len(DemoStore(path))
    except DatasetError:
        return 0


def test_another_writer_is_refused(dataset):
    with DemoStore(dataset), pytest.raises(DatasetError, match="another robolearn process"):
        DemoStore(dataset).lock()


def test_episode_files_hold_no_pickles(dataset):
    for path in DemoStore(dataset).episode_paths():
        with np.load(path, allow_pickle=False) as archive:
            assert all(archive[key].dtype != object for key in archive.files)
    assert os.path.getsize(dataset / "meta.json") > 0


def test_ctrl_c_wrapped_by_ctypes_still_stops_cleanly(tmp_path, monkeypatch, capsys):
    """Ctrl-C landing inside PyOpenGL's argument conversion arrives as ctypes.ArgumentError; other such errors don't."""
    import ctypes

    from robolearn import record

    def interrupted(config, store):
        raise ctypes.ArgumentError("argument 1: KeyboardInterrupt: ")

    monkeypatch.setattr(record, "_record_scripted", interrupted)
    config = record.RecordConfig(task="reach", out=tmp_path / "wrapped", episodes=1, image_size=24)
    assert record.run(config) == tmp_path / "wrapped"
    assert "stopped by Ctrl-C" in capsys.readouterr().out

    def broken(config, store):
        raise ctypes.ArgumentError("argument 1: TypeError: wrong type")

    monkeypatch.setattr(record, "_record_scripted", broken)
    with pytest.raises(ctypes.ArgumentError, match="wrong type"):
        record.run(record.RecordConfig(task="reach", out=tmp_path / "broken", episodes=1, image_size=24))


def test_scripted_perturbations_are_stored_replay_exactly_and_are_not_imitated(tmp_path):
    import torch

    from robolearn.data.loader import EpisodeBatches, StreamingBatches

    with pytest.raises(ValueError, match="try 0.02"):
        RecordConfig(task="push", perturb=1.5)
    with pytest.raises(ValueError, match="record with --device scripted"):
        RecordConfig(task="push", device="keyboard", perturb=0.1)
    out = tmp_path / "push"
    run(RecordConfig(task="push", out=out, episodes=2, image_size=16, workers=1, perturb=0.1))
    store = DemoStore(out)
    env = make("push", cameras=("front", "wrist"), image_size=16)
    for episode in store.episodes():
        perturbed = episode.perturbed
        assert perturbed is not None and perturbed.dtype == bool and perturbed.shape == (len(episode),)
        assert 0 < perturbed.sum() == episode.info["perturbed_steps"] < len(episode)
        np.testing.assert_array_equal(episode.imitate, ~perturbed)
        # The perturbed actions are what was executed: replaying every action gives back every state.
        env.reset(seed=episode.info["seed"])
        for t, action in enumerate(episode.actions):
            env.step(action)
            np.testing.assert_array_equal(env.get_state(), episode.states[t + 1])
    # Without --perturb the files hold no such key and every step is imitated.
    plain = run(RecordConfig(task="push", out=tmp_path / "plain", episodes=1, image_size=16, workers=1))
    unperturbed = DemoStore(plain).load(0)
    assert unperturbed.perturbed is None and unperturbed.imitate.all()
    # Training masks the perturbed actions out, wherever they fall in a chunk, in both loaders.
    batches = EpisodeBatches(store, [0, 1], ("state",), history=2, chunk=3, device=torch.device("cpu"))
    flags = np.concatenate([episode.perturbed for episode in store.episodes()])
    lengths = [len(episode) for episode in store.episodes()]
    ends = np.repeat(np.cumsum(lengths) - 1, lengths)
    for k in range(3):
        ahead = np.arange(len(flags)) + k
        expected = (ahead <= ends) & ~flags[np.minimum(ahead, ends)]
        np.testing.assert_array_equal(batches.action_mask[:, k].numpy(), expected.astype(np.float32))
    stream = iter(StreamingBatches(store, [0], ("state",), history=2, chunk=3, seed=0, samples_per_episode=64))
    episode = store.load(0)
    for _ in range(64):
        sample = next(stream)
        t = int(np.flatnonzero((episode.observations["state"] == sample["obs/state"][-1]).all(axis=1))[0])
        ahead = t + np.arange(3)
        expected = (ahead < len(episode)) & ~episode.perturbed[np.minimum(ahead, len(episode) - 1)]
        np.testing.assert_array_equal(sample["action_mask"], expected.astype(np.float32))
    # The marks travel: robomimic export and import, and the dataset summary.
    from robolearn.data.robomimic import ExportConfig, ImportConfig, export, import_

    back = DemoStore(import_(ImportConfig(export(ExportConfig(out, tmp_path / "push.hdf5")), out=tmp_path / "back")))
    for source, copy in zip(store.episodes(), back.episodes()):
        np.testing.assert_array_equal(copy.perturbed, source.perturbed)
    assert summary(store)["perturbed_steps"] == int(flags.sum())
    env.close()
