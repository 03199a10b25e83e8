"""``robolearn render``: a new dataset with other cameras or image size, rendered from the stored states.

Every step of a dataset stores the full simulator state, so its images can be made again at
any size, from any camera of the task (or for the first time, for a dataset recorded with
``--no-images``). The new dataset keeps the actions, states, rewards, successes and episode
info; its ``obs/rgb/<camera>`` frames are rendered from the states and ``state`` and
``privileged`` recomputed from them, which must give back the stored values (the report says
if they do not). The source is only read; the new dataset is written under a temporary name
and renamed when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tyro.conf import Positional

from robolearn.data.replay import env_for_dataset
from robolearn.data.store import DatasetError, DemoStore, Episode, load_episode


@dataclass
class RenderConfig:
    """Re-render camera frames of a dataset from its stored states into a new dataset."""

    dataset: Positional[Path]
    """The source dataset folder (demos/<name>); it is only read."""
    out: Path
    """The new dataset folder; it must not exist yet or be empty."""
    cameras: tuple[str, ...] = ("front", "wrist")
    """Cameras to render for every step (any camera of the task)."""
    size: int = 84
    """Height and width of the rendered frames in pixels."""
    task: str | None = None
    """Task id or task file to rebuild the env with when the dataset's own task is not installed here."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"--size must be at least 8 pixels, found {self.size}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"--cameras lists a camera twice: {' '.join(self.cameras)}")


def check_new_folder(out: Path, source: Path | None = None) -> None:
    """Refuse an output folder that is the source, lies inside it, or already holds files."""
    if source is not None:
        source, target = source.resolve(), out.resolve()
        if target == source or source in target.parents:
            raise DatasetError(f"{out} is inside the source dataset {source}; choose an --out folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not empty; choose a new --out folder (nothing was written)")


@contextlib.contextmanager
def new_dataset_folder(out: Path, source: Path | None = None) -> Iterator[Path]:
    """A fresh staging folder beside ``out``, renamed to ``out`` when the block succeeds and removed if it fails."""
    check_new_folder(out, source)
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by an earlier run that crashed; never part of a dataset
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, out)  # atomic; an existing empty `out` folder is replaced


def render(config: RenderConfig) -> Path:
    """Write the re-rendered dataset to ``config.out`` and return its path."""
    source = DemoStore(config.dataset)
    check_new_folder(config.out, source.root)  # before building anything
    overrides = {"cameras": tuple(config.cameras), "image_size": config.size}
    env = env_for_dataset(source, config.task, **overrides)
    task_id = config.task or source.meta["task"]["id"]
    env_kwargs = {**source.meta["env"], **overrides}
    task_kwargs = source.meta["task"].get("kwargs") if config.task is None else {}
    paths = source.episode_paths()
    frames = sum(int(info.get("steps", 0)) for info in source.episode_infos())
    largest: dict[str, float] = {}
    try:
        with new_dataset_folder(config.out, source.root) as staging:
            target = DemoStore.create(staging, env, task_id, env_kwargs, task_kwargs)
            progress = tqdm(total=frames, desc=f"render {', '.join(config.cameras)}", unit="frame")
            with target, progress:
                for path in paths:
                    episode = load_episode(path, source.meta)
                    target.append(_rendered(env, episode, largest))
                    progress.update(len(episode))
            (staging / ".lock").unlink(missing_ok=True)
    finally:
        env.close()
    differing = {name: value for name, value in largest.items() if value > 0}
    cameras = ", ".join(config.cameras) or "none"
    print(f"rendered {len(paths)} episodes ({frames} steps), cameras {cameras} at {config.size}x{config.size}")
    if differing:
        print(
            "warning: observations recomputed from the stored states differ from the stored ones (largest: "
            + ", ".join(f"{name} {value:.3g}" for name, value in differing.items())
            + "); the new dataset holds the recomputed ones. Was the source recorded with another MuJoCo or task?"
        )
    else:
        print(f"  {', '.join(largest) or 'no vector observations'}: recomputed from the states, identical to stored")
    print(f"  new dataset: {config.out} (see `robolearn info {config.out}`)")
    return config.out


def _rendered(env, episode: Episode, largest: dict[str, float]) -> Episode:
    """The episode with observations made again from its states; ``largest`` collects differences."""
    observations: dict[str, list[np.ndarray]] = {}
    for state in episode.states[:-1]:  # the final state has no observation
        for name, value in env.set_state(state).items():
            observations.setdefault(name, []).append(value)
    stacked = {name: np.stack(values) for name, values in observations.items()}
    for name, stored in episode.observations.items():
        if name in stacked and not name.startswith("rgb/"):
            difference = float(np.max(np.abs(stacked[name].astype(np.float64) - stored), initial=0.0))
            largest[name] = max(largest.get(name, 0.0), difference)
    return Episode(
        actions=episode.actions,
        observations=stacked,
        states=episode.states,
        rewards=episode.rewards,
        successes=episode.successes,
        info=episode.info,
        perturbed=episode.perturbed,
    )
