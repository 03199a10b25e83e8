"""``robolearn record``: the stage that creates ``demos/<name>/``.

With ``--device scripted`` episodes come from the task's scripted operator, headless,
in several worker processes when more than one core is free. With a teleoperation
device (keyboard, mouse, spacemouse, gamepad) a person drives the arm in the live
MuJoCo viewer (``robolearn.teleop``). Either way every finished episode is committed
atomically, so a crash loses at most the episode in progress, and recording into an
existing dataset resumes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from robolearn.data.recorder import record_episode
from robolearn.data.store import DemoStore
from robolearn.envs import make
from robolearn.envs.env import EVALUATION_SEED_START

DEVICES = ("scripted", "keyboard", "mouse", "spacemouse", "gamepad")


@dataclass
class RecordConfig:
    """Record demonstrations of a task into a dataset folder."""

    task: str = "lift"
    """Task id, task file path (envs/my_task.py) or gym:/dmc: id."""
    out: Path | None = None
    """Dataset folder; default demos/<task>. An existing dataset of the same task is resumed."""
    device: Literal["scripted", "keyboard", "mouse", "spacemouse", "gamepad"] = "scripted"
    """Who drives: the task's scripted operator, or a person with a teleoperation device."""
    episodes: int = 50
    """Episodes to add to the dataset (kept ones)."""
    keep: Literal["success", "all", "ask"] = "success"
    """Which finished episodes are kept: successful ones, all, or ask after each (teleop only)."""
    cameras: tuple[str, ...] = ("front", "wrist")
    """Cameras whose frames are stored with every step."""
    image_size: int = 84
    """Height and width of stored camera frames in pixels."""
    no_images: bool = False
    """Store no frames (fastest teleop); render them later with `robolearn render`."""
    seed: int | None = None
    """First episode seed; default: one past the largest seed already in the dataset."""
    workers: int = 0
    """Worker processes for scripted recording; 0 picks one per free core."""
    steps_after_success: int = 10
    """Scripted episodes end this many steps after the first success."""
    perturb: float = 0.0
    """Scripted only: the chance per step that the arm is knocked off the operator's course for a few
    steps (a random translation). The operator recovers; the perturbed steps are stored (replay stays
    exact) and marked, and training imitates the recovery but not the perturbation (DART-style data:
    demonstrations that also show how to get back on course). 0: none."""
    speed: float = 1.0
    """Teleoperation speed factor (device motion to end-effector motion)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, found {self.episodes}")
        if self.keep == "ask" and self.device == "scripted":
            raise ValueError("--keep ask needs a person at a teleoperation device; use success or all with scripted")
        if not 0.0 <= self.perturb < 1.0:
            raise ValueError(f"--perturb is a chance per step in [0, 1), found {self.perturb}; try 0.02")
        if self.perturb and self.device != "scripted":
            raise ValueError(
                f"--perturb knocks the scripted operator off course; found --device {self.device}: "
                "drop --perturb, or record with --device scripted"
            )
        if self.image_size < 8:
            raise ValueError(f"--image-size must be at least 8 pixels, found {self.image_size}")
        if self.out is None:
            self.out = Path("demos") / Path(self.task).stem.replace(":", "_")

    def env_kwargs(self) -> dict:
        cameras = () if self.no_images else tuple(self.cameras)
        return {"cameras": cameras, "image_size": self.image_size}


def run(config: RecordConfig) -> Path:
    """Record ``config.episodes`` kept episodes into ``config.out`` and return the folder."""
    env = make(config.task, **config.env_kwargs())
    store = DemoStore.create(config.out, env, config.task, config.env_kwargs())
    before = len(store)
    with store:
        try:
            if config.device == "scripted":
                env.close()
                _record_scripted(config, store)
            else:
                from robolearn.teleop.session import record_with_device

                record_with_device(config, env, store)
                env.close()
        except KeyboardInterrupt:
            print("stopped by Ctrl-C; every finished episode is saved")
        except ctypes.ArgumentError as error:
            # Ctrl-C that lands while PyOpenGL converts a call's arguments reaches us wrapped by ctypes.
            if not _is_interrupt(error):
                raise
            print("stopped by Ctrl-C; every finished episode is saved")
    kept = len(store) - before
    print(f"kept {kept} episodes; {store.root} now holds {len(store)} (see `robolearn info {store.root}`)")
    return store.root


def _is_interrupt(error: BaseException) -> bool:
    return isinstance(error.__context__, KeyboardInterrupt) or "KeyboardInterrupt" in str(error)


def first_seed(store: DemoStore, requested: int | None) -> int:
    if requested is not None:
        return requested
    seeds = [info["seed"] for info in store.episode_infos() if isinstance(info.get("seed"), int)]
    return max(seeds) + 1 if seeds else 0


def _workers(requested: int) -> int:
    if requested > 0:
        return requested
    free = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(free, 8))


def _keep(config: RecordConfig, episode) -> bool:
    return config.keep == "all" or episode.success


def _record_scripted(config: RecordConfig, store: DemoStore) -> int:
    seed = first_seed(store, config.seed)
    workers = _workers(config.workers)
    progress = tqdm(total=config.episodes, desc=f"record {config.task}", unit="episode")
    kept = attempted = 0
    try:
        if workers == 1:
            env = make(config.task, **config.env_kwargs())
            from robolearn.envs.operator import ScriptedPolicy

            policy = ScriptedPolicy(env, config.perturb)
            while kept < config.episodes:
                _check_seed(seed + attempted)
                episode = record_episode(env, policy, seed + attempted, "scripted", config.steps_after_success)
                attempted += 1
                if _keep(config, episode):
                    store.append(episode)
                    kept += 1
                    progress.update()
            env.close()
            return kept
        return _record_parallel(config, store, seed, workers, progress)
    finally:
        progress.close()


def _check_seed(seed: int) -> None:
    if seed >= EVALUATION_SEED_START:
        raise ValueError(
            f"seed {seed} is reserved for evaluation (seeds from {EVALUATION_SEED_START} on); record with lower seeds"
        )


def _record_parallel(config: RecordConfig, store: DemoStore, seed: int, workers: int, progress) -> int:
    """Workers record episodes by seed; this process writes them in seed order (no gaps, no races)."""
    context = multiprocessing.get_context("spawn")  # each worker starts its own GL context
    tasks, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_worker, args=(config, tasks, results), daemon=True) for _ in range(workers)]
    for process in processes:
        process.start()
    next_seed, in_flight, waiting, next_to_write, kept = seed, 0, {}, seed, 0
    try:
        while kept < config.episodes:
            while in_flight < 2 * workers and kept + in_flight < config.episodes + workers:
                _check_seed(next_seed)
                tasks.put(next_seed)
                next_seed, in_flight = next_seed + 1, in_flight + 1
            episode_seed, episode = _next_result(results, processes)
            if isinstance(episode, BaseException):
                raise RuntimeError(f"a recording worker failed on seed {episode_seed}") from episode
            in_flight -= 1
            waiting[episode_seed] = episode
            while next_to_write in waiting and kept < config.episodes:
                episode = waiting.pop(next_to_write)
                next_to_write += 1
                if _keep(config, episode):
                    store.append(episode)
                    kept += 1
                    progress.update()
        return kept
    finally:
        for _ in processes:
            tasks.put(None)
        # Episodes still in flight are not needed; drain them, or their workers cannot exit
        # (a process waits at exit until what it queued has been read).
        deadline = time.monotonic() + 10
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.05)
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


def _next_result(results, processes, patience: float = 120.0):
    """The next (seed, episode) from the workers. Fails at once if a worker has died (workers only exit
    when told to, so a dead one crashed, e.g. while starting), or after ``patience`` s without an episode."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            dead = [process.exitcode for process in processes if not process.is_alive()]
            if dead:
                raise RuntimeError(
                    f"a recording worker exited with code {dead[0]} before its episodes were done; its error "
                    "is printed above. Recording with --workers 1 runs in this process and shows it directly"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no episode finished in {patience:.0f} s; the recording workers are stuck"
                ) from None


def _worker(config: RecordConfig, tasks, results) -> None:
    import signal

    import robolearn  # noqa: F401  (headless GL before mujoco, in the fresh process)
    from robolearn.envs.operator import ScriptedPolicy

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    env = make(config.task, **config.env_kwargs())
    policy = ScriptedPolicy(env, config.perturb)
    while (seed := tasks.get()) is not None:
        try:
            results.put((seed, record_episode(env, policy, seed, "scripted", config.steps_after_success)))
        except Exception as error:  # reported to the parent, which stops the recording
            results.put((seed, error))
    env.close()
