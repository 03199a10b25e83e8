"""Training and evaluation end to end on a tiny dataset: folders, exact resume, refusals, DDP, eval results."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from robolearn.checkpoint import PolicyFolderError, load_policy, read_config
from robolearn.data import DemoStore
from robolearn.envs import make
from robolearn.evaluate import EvalConfig, wilson_interval
from robolearn.evaluate import run as evaluate
from robolearn.policies.bc import BCConfig
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.train import TrainConfig
from robolearn.train import run as train
from robolearn.video import read_mp4

BIN = Path(sys.executable).parent
TINY = BCConfig(channels=8, keypoints=8, hidden=32, layers=1, chunk=4, trunk_input="features")


def tiny(dataset, out, **overrides) -> TrainConfig:
    settings = dict(steps=12, batch_size=8, log_every=1, save_every=4, eval_every=-1, warmup=2, bc=TINY)
    settings.update(overrides)
    return TrainConfig(dataset=dataset, out=out, **settings)


def losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "lift"
    record(RecordConfig(task="lift", out=out, episodes=3, image_size=32, workers=1))
    return out


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    return train(tiny(dataset, tmp_path_factory.mktemp("policies") / "lift-bc"))


def test_policy_folder_holds_data_not_pickles(trained):
    names = {path.name for path in trained.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "training_state.safetensors"} <= names
    assert {"training_state.json", "log.jsonl", "tensorboard"} <= names
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    config = read_config(trained)
    assert config["task"]["id"] == "lift" and config["env"]["image_size"] == 32
    assert config["features"]["observations"]["rgb/front"]["shape"] == [32, 32, 3]
    assert config["policy_config"]["chunk"] == 4
    assert not [path for path in trained.rglob("*") if path.suffix in (".pt", ".pth", ".pkl", ".ckpt")]


def test_save_load_gives_the_same_actions(trained):
    env = make("lift", cameras=("front", "wrist"), image_size=32)
    first, second = load_policy(trained), load_policy(trained)
    observation, _ = env.reset(seed=0)
    for _ in range(5):
        action = first.act(observation)
        np.testing.assert_array_equal(action, second.act(observation))
        assert action.shape == (5,) and action.dtype == np.float32 and np.abs(action).max() <= 1
        observation, *_ = env.step(action)


def test_resume_reproduces_the_uninterrupted_run_exactly(dataset, tmp_path):
    straight = train(tiny(dataset, tmp_path / "straight"))
    train(tiny(dataset, tmp_path / "interrupted", until=6))
    assert len(losses(tmp_path / "interrupted")) == 6
    resumed = train(tiny(dataset, tmp_path / "interrupted", resume=True))
    assert losses(resumed) == losses(straight)
    for name in ("model", "ema"):
        a = load_policy(straight, name).state_dict()
        b = load_policy(resumed, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_ctrl_c_stops_after_the_step_saved_and_resumable(dataset, tmp_path):
    out = tmp_path / "ctrl-c"
    command = [str(BIN / "robolearn"), "train", str(dataset), "--out", str(out), "--steps", "100000"]
    command += ["--batch-size", "8", "--log-every", "1", "--save-every", "1000", "--eval-every", "-1"]
    command += ["--bc.channels", "8", "--bc.keypoints", "8", "--bc.hidden", "32", "--bc.layers", "1", "--scenes", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "--resume" in stdout + stderr
    stopped = json.loads((out / "training_state.json").read_text())["step"]
    assert 3 <= stopped < 1000 and len(losses(out)) == stopped  # saved at the step it stopped, not at a save point
    load_policy(out)
    subprocess.run([*command, "--resume", "--until", str(stopped + 2)], check=True, capture_output=True, timeout=240)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, stopped + 3))


def test_training_into_a_trained_folder_needs_resume(dataset, trained):
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(dataset, trained))


def test_non_finite_loss_stops_without_a_bad_checkpoint(dataset, tmp_path, monkeypatch):
    from robolearn.policies.bc import BCPolicy

    original = BCPolicy.loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, metrics = original(self, batch)
        return (loss * float("nan") if calls["n"] == 6 else loss), metrics

    monkeypatch.setattr(BCPolicy, "loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="at step 5"):
        train(tiny(dataset, out, save_every=2, log_every=100))
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 4
    for name in ("model", "ema"):
        assert all(torch.isfinite(t).all() for t in load_policy(out, name).state_dict().values())


def test_dataset_that_does_not_fit_its_task_is_refused(dataset, tmp_path):
    copy = tmp_path / "bad"
    shutil.copytree(dataset, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["features"]["action"]["shape"] = [4]
    meta["features"]["action"]["layout"] = []
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"action size: task expects \(5,\), dataset has \(4,\)"):
        train(tiny(copy, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_loading_refuses_other_formats(trained, tmp_path):
    copy = tmp_path / "policy"
    shutil.copytree(trained, copy)
    (copy / "ema.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(PolicyFolderError, match="not a readable safetensors"):
        load_policy(copy)
    with pytest.raises(PolicyFolderError, match="no config.json"):
        load_policy(tmp_path)


def test_evaluation_writes_results_and_videos_and_is_reproducible(trained):
    first = evaluate(EvalConfig(trained, episodes=3, workers=2, video=True, video_episodes=2, video_size=64, label="a"))
    second = evaluate(EvalConfig(trained, episodes=3, workers=1, label="b"))
    for key in ("success_rate", "success_ci95", "mean_return", "episodes", "seed"):
        assert key in first
    assert first["success_rate"] == second["success_rate"] and first["mean_return"] == second["mean_return"]
    out = trained / "eval" / "a"
    assert sorted(p.name for p in (out / "episodes").iterdir()) == [f"seed_{1_000_000 + i}.json" for i in range(3)]
    frames, meta = read_mp4(out / "grid.mp4")
    assert meta["codec"] == "h264" and frames.shape[1:] == (64, 128, 3)  # two films side by side
    assert len(list((out / "videos").glob("seed_*.mp4"))) == 2


def test_wilson_interval():
    low, high = wilson_interval(45, 50)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_torchrun_ddp_two_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [str(BIN / "torchrun"), "--nproc_per_node=2", "--master_port=29533", str(BIN / "robolearn"), "train"]
    command += [str(dataset), "--out", str(out), "--steps", "6", "--batch-size", "8", "--log-every", "2"]
    command += ["--eval-every", "-1", "--bc.channels", "8", "--bc.keypoints", "8", "--bc.hidden", "32"]
    command += ["--scenes", "16"]  # rank 0 renders and caches them while rank 1 waits
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_config(out)["world_size"] == 2
    assert len(losses(out)) == 3
    load_policy(out)


def test_store_episodes_match_dataset(dataset):
    assert len(DemoStore(dataset)) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
def test_training_on_cuda_with_bf16_autocast(dataset, tmp_path):
    out = train(tiny(dataset, tmp_path / "cuda", device="cuda"))
    assert read_config(out)["device"].startswith("cuda")
    assert all(np.isfinite(loss) for loss in losses(out))
    policy = load_policy(out, device="cuda")
    env = make("lift", cameras=("front", "wrist"), image_size=32)
    observation, _ = env.reset(seed=0)
    assert policy.act(observation).shape == (5,)


def test_streaming_loader_for_datasets_larger_than_memory(dataset, tmp_path):
    out = train(tiny(dataset, tmp_path / "stream", steps=4, data="stream", data_workers=1))
    assert read_config(out)["data_loading"] == "stream"
    assert len(losses(out)) == 4 and all(np.isfinite(loss) for loss in losses(out))


def test_auxiliary_object_position_loss(dataset, tmp_path):
    config = replace(TINY, aux_weight=1.0)
    out = train(tiny(dataset, tmp_path / "aux", bc=config))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["aux"]) for row in rows if "aux" in row) and any("aux" in row for row in rows)
    policy = load_policy(out)
    assert "privileged" in policy.training_keys and "privileged" not in policy.observation_keys
    observation, _ = make("lift", image_size=32).reset(seed=0)
    del observation["privileged"]  # acting never needs it
    assert policy.act(observation).shape == (5,)


def test_random_scenes_train_the_position_estimator_and_resume_exactly(tmp_path):
    dataset = tmp_path / "push"
    record(RecordConfig(task="push", out=dataset, episodes=2, image_size=32, workers=1))
    bc = replace(TINY, history=2, aux_weight=1.0, trunk_input="relative", state_features=("gripper_opening",))
    with pytest.raises(ValueError, match="--scenes trains the per-frame position estimator"):
        train(tiny(dataset, tmp_path / "features", scenes=8, bc=replace(TINY, aux_weight=1.0)))
    settings = dict(scenes=16, scene_batch=4, bc=bc)
    straight = train(tiny(dataset, tmp_path / "straight", **settings))
    lines = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["scene_aux"]) for line in lines if "loss" in line)
    assert len(list((dataset / "scenes").glob("*.safetensors"))) == 1
    from robolearn.data.inspect import InfoConfig, info

    assert info(InfoConfig(dataset))["scene_bytes"] > 0  # `robolearn info` tells them apart from the episodes
    train(tiny(dataset, tmp_path / "interrupted", until=6, **settings))
    resumed = train(tiny(dataset, tmp_path / "interrupted", resume=True, **settings))
    assert losses(resumed) == losses(straight)
    env = make("push", image_size=32)
    policy = load_policy(straight)
    observation, _ = env.reset(seed=0)
    assert policy.act(observation).shape == (5,)
    env.close()


def test_defaults_train_the_measured_recipe(dataset, tmp_path, monkeypatch):
    import robolearn.train as training

    monkeypatch.setattr(training, "DEFAULT_SCENES", 8)  # 5,000 in earnest
    out = train(tiny(dataset, tmp_path / "defaults", bc=replace(TINY, trunk_input="auto"), scenes=None))
    saved = read_config(out)
    assert saved["policy_config"]["trunk_input"] == "relative" and saved["policy_config"]["aux_weight"] == 1.0
    assert saved["train"]["scenes"] == 8 and saved["train"]["bc"] == saved["policy_config"]  # decided, not "auto"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["scene_aux"]) for row in rows if "loss" in row)
    # Without a position estimator no scenes are rendered.
    plain = train(tiny(dataset, tmp_path / "features", scenes=None))
    assert read_config(plain)["train"]["scenes"] == 0
    # The diagnostic evaluation on true object positions: its own results folder; refused where nothing is estimated.
    metrics = evaluate(EvalConfig(out, episodes=2, positions="true"))
    assert metrics["positions"] == "true" and (out / "eval" / "best-seed0-2-true-positions" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="trunk input 'features', which has none"):
        evaluate(EvalConfig(plain, episodes=1, positions="true"))


def test_ctrl_c_stops_evaluation_and_keeps_the_finished_episodes(trained):
    import re
    import threading

    evaluate(EvalConfig(trained, episodes=2, seed=5000, label="stop"))  # an earlier run, replaced by the next
    command = [str(BIN / "robolearn"), "eval", str(trained), "--episodes", "400", "--workers", "2", "--label", "stop"]
    # A new session: Ctrl-C in a terminal reaches the whole process group, workers included.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not re.search(r"\| *[1-9]\d*/400", "".join(errors)) and time.monotonic() < deadline:
        assert process.poll() is None, "".join(errors)[-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    output = process.stdout.read()
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    assert "Traceback" not in "".join(errors), "".join(errors)[-3000:]
    metrics = json.loads((trained / "eval" / "stop" / "metrics.json").read_text())
    assert metrics["interrupted"] and metrics["episodes_planned"] == 400 and 1 <= metrics["episodes"] < 400
    kept = sorted((trained / "eval" / "stop" / "episodes").glob("*.json"))
    assert len(kept) == metrics["episodes"] and all(int(path.stem[5:]) < 1_000_400 for path in kept)
    assert "of 400 episodes finished" in output
