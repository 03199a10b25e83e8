"""``robolearn replay``: play one stored episode back in the simulator, from its states or its actions.

From states (the default) every stored simulator state is set in turn, which reproduces the
episode exactly whatever the controller does; the observations re-derived at each state
(``state``, ``privileged``) are compared with the stored ones. With ``--from-actions`` the env
starts from the first stored state and re-executes the stored actions, as a policy would: the
report gives the largest drift of the joint positions (qpos) from the stored states, the step
where it is largest, and whether success comes at the same step. Either way ``--video`` writes
an H.264 mp4 of one camera.

``env_for_dataset`` (rebuild the env a dataset was recorded with) is shared with ``render``
and ``export``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np
from tyro.conf import Positional

from robolearn.data.store import DatasetError, DemoStore, Episode
from robolearn.envs import make
from robolearn.video import write_mp4


@dataclass
class ReplayConfig:
    """Play a stored episode back from its states (exact) or its actions (drift report); optionally film it."""

    dataset: Positional[Path]
    """The dataset folder (demos/<name>)."""
    episode: int = 0
    """Index of the episode to replay (episodes/episode_NNNNNN.npz)."""
    video: Path | None = None
    """Write an mp4 of the replay here."""
    from_actions: bool = False
    """Re-execute the stored actions from the first stored state instead of setting every state."""
    camera: str = "view"
    """Camera to film with (view, front, wrist)."""
    size: int = 256
    """Height and width of the video in pixels."""
    task: str | None = None
    """Task id or task file to rebuild the env with when the dataset's own task is not installed here."""

    def __post_init__(self) -> None:
        if self.episode < 0:
            raise ValueError(f"--episode must be 0 or more, found {self.episode}")
        if self.size < 8:
            raise ValueError(f"--size must be at least 8 pixels, found {self.size}")


def env_for_dataset(store: DemoStore, task: str | None = None, **overrides):
    """Rebuild the env a dataset was recorded with: task id and env kwargs from its meta.json.

    ``overrides`` replace env kwargs (other cameras or image size); ``task`` names a task id or
    file to use instead of the recorded one. Raises ``DatasetError`` when the task is not
    installed, the dataset has none, or the rebuilt simulator's state has another size.
    """
    meta = store.meta
    task_id = task or meta["task"]["id"]
    if task_id is None:
        source = (meta.get("source") or {}).get("file", "a file without robolearn metadata")
        raise DatasetError(
            f"{store.meta_path}: the dataset has no task (it was imported from {source}); replaying and "
            "rendering need the simulator: re-import it with `robolearn import <file> --out <folder> --task <id>`"
        )
    kwargs = {**meta["env"], **overrides}
    task_kwargs = (meta["task"].get("kwargs") or None) if task is None else None
    try:
        env = make(task_id, task_kwargs=task_kwargs, **kwargs)
    except (KeyError, FileNotFoundError) as error:
        reason = error.args[0] if error.args else error
        raise DatasetError(
            f"{store.meta_path}: the dataset's task {task_id!r} is not installed here ({reason}). Put its task "
            "file (and MJCF) in ./envs/ of the folder you run robolearn from, or name the file with "
            "--task path/to/<task>.py"
        ) from error
    state_size = int(env.get_state().shape[0])
    if state_size != meta["state_size"]:
        env.close()
        raise DatasetError(
            f"{store.meta_path}: task {task_id!r} builds a simulator state of {state_size} numbers, the dataset "
            f"stores {meta['state_size']}; it was recorded with another version of the task: use that task file "
            "(--task path/to/<task>.py)"
        )
    mjcf = meta.get("mjcf")
    xml = getattr(env, "mjcf_xml", None)
    if mjcf and xml and hashlib.sha256(xml.encode()).hexdigest() != mjcf["sha256"]:
        warnings.warn(
            f"the model of task {task_id!r} differs from {store.root / mjcf['file']} (the task file changed since "
            "recording): replayed physics may differ",
            stacklevel=2,
        )
    return env


def positions(env, states: np.ndarray) -> tuple[np.ndarray, str]:
    """The joint positions (qpos) inside stored states (n, S), and what they are called in a report.

    A state vector starts with the time, then qpos (``mjSTATE_INTEGRATION`` order); envs that
    do not expose their MuJoCo model are compared on the whole state after the time.
    """
    model = getattr(env, "model", None)
    if isinstance(model, mujoco.MjModel):
        return states[:, 1 : 1 + model.nq], "qpos"
    return states[:, 1:], "state"


def replay(config: ReplayConfig) -> dict:
    """Replay ``config.episode`` of ``config.dataset``, print a short report and return it as a dict."""
    store = DemoStore(config.dataset)
    episode = store.load(config.episode)
    env = env_for_dataset(store, config.task, cameras=())  # no stored cameras: only the video renders
    try:
        film = (lambda: env.render_camera_image(config.camera, config.size)) if config.video else None
        if config.from_actions:
            report, frames = _replay_actions(env, episode, film)
        else:
            report, frames = _replay_states(env, episode, film)
    finally:
        env.close()
    report = {"dataset": str(store.root), "episode": config.episode, "steps": len(episode), **report}
    if config.video:
        report["video"] = str(write_mp4(config.video, frames, fps=store.meta.get("control_rate") or 20))
    _print(report, store.meta["task"]["id"])
    return report


def _replay_states(env, episode: Episode, film) -> tuple[dict, list[np.ndarray]]:
    """Set every stored state; compare the re-derived vector observations with the stored ones."""
    stored = {name: values for name, values in episode.observations.items() if not name.startswith("rgb/")}
    largest = dict.fromkeys(stored, 0.0)
    first_mismatch: int | None = None
    frames = []
    for t, state in enumerate(episode.states):
        observation = env.set_state(state)
        if film:
            frames.append(film())
        if t == len(episode):  # the final state has no stored observation
            break
        for name, values in stored.items():
            difference = float(np.max(np.abs(observation[name].astype(np.float64) - values[t]), initial=0.0))
            largest[name] = max(largest[name], difference)
            if difference > 0 and first_mismatch is None:
                first_mismatch = t
    report = {
        "mode": "states",
        "observations_match": first_mismatch is None,
        "observation_difference": largest,
        "first_mismatch_step": first_mismatch,
    }
    return report, frames


def _replay_actions(env, episode: Episode, film) -> tuple[dict, list[np.ndarray]]:
    """Start from the first stored state and re-execute the stored actions; measure the drift."""
    env.set_state(episode.states[0])
    frames = [film()] if film else []
    states, successes, rewards = [episode.states[0]], [], []
    stopped = ""
    for action in episode.actions:
        _, reward, terminated, _, info = env.step(action)
        states.append(env.get_state())
        successes.append(bool(info["is_success"]))
        rewards.append(reward)
        if film:
            frames.append(film())
        if terminated and info.get("physics_warning"):
            stopped = info["physics_warning"]
            break
    replayed, label = positions(env, np.stack(states))
    recorded, _ = positions(env, episode.states[: len(states)])
    drift = np.max(np.abs(replayed - recorded), axis=1)
    stored_first = _first(episode.successes)
    replayed_first = _first(np.array(successes, bool))
    report = {
        "mode": "actions",
        "drift_of": label,
        "max_drift": float(drift.max()),
        "max_drift_step": int(drift.argmax()),
        "final_drift": float(drift[-1]),
        "max_reward_difference": float(np.max(np.abs(np.array(rewards, np.float32) - episode.rewards[: len(rewards)]))),
        "success_stored": episode.success,
        "success_replayed": replayed_first is not None,
        "first_success_stored": stored_first,
        "first_success_replayed": replayed_first,
        "success_matches": stored_first == replayed_first,
        "stopped_early": stopped or None,
    }
    return report, frames


def _first(flags: np.ndarray) -> int | None:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if hits.size else None


def _print(report: dict, task: str) -> None:
    print(f"replay {task} episode {report['episode']} ({report['steps']} steps) from stored {report['mode']}")
    if report["mode"] == "states":
        names = ", ".join(report["observation_difference"]) or "none"
        if report["observations_match"]:
            print(f"  observations ({names}) re-derived from the stored states: identical to the stored ones")
        else:
            differences = ", ".join(f"{k} {v:.3g}" for k, v in report["observation_difference"].items())
            print(
                f"  observations re-derived from the stored states differ from the stored ones from step "
                f"{report['first_mismatch_step']} on (largest: {differences}); "
                "was the dataset recorded with another MuJoCo or task version?"
            )
    else:
        drift = report["max_drift"]
        where = "exact replay" if drift == 0 else f"largest at step {report['max_drift_step']}"
        print(f"  {report['drift_of']} drift from the stored states: max {drift:.3g} ({where})")
        stored, replayed = report["first_success_stored"], report["first_success_replayed"]
        verdict = "matches" if report["success_matches"] else "DIFFERS"
        print(f"  first success: stored at step {stored}, replayed at step {replayed} ({verdict})")
        if report["stopped_early"]:
            print(f"  the replay stopped early: {report['stopped_early']}")
    if report.get("video"):
        print(f"  video: {report['video']}")
