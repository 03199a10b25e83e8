"""Preview tasks: scripted episodes of each task rendered into one mp4 (``robolearn preview``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robolearn.envs import make, task_names
from robolearn.envs.operator import ScriptedPolicy
from robolearn.rollout import rollout
from robolearn.video import border, tile, write_mp4

SUCCESS_RGB, FAILURE_RGB = (40, 200, 60), (220, 40, 40)


@dataclass
class PreviewConfig:
    """Record scripted episodes of tasks into one video: a quick look at what each task asks."""

    out: Path = Path("videos/scripted.mp4")
    """Where the mp4 goes."""
    tasks: tuple[str, ...] = ()
    """Task ids to show; empty means every registered task."""
    episodes: int = 2
    """Episodes per task, shown side by side."""
    seed: int = 0
    """First episode seed; episode i of a task uses seed + i."""
    size: int = 192
    """Height and width of each episode's view in pixels."""
    camera: str = "view"
    """Camera to film with (any task camera: view, front, wrist)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, found {self.episodes}")


def run(config: PreviewConfig) -> Path:
    """Write the preview video and return its path. A green border marks success."""
    tasks = config.tasks or tuple(task_names())
    segments: list[np.ndarray] = []
    results = []
    for task in tqdm(tasks, desc="preview", unit="task"):
        env = make(task, cameras=())
        policy = ScriptedPolicy(env)
        episodes = [
            rollout(
                env, policy, config.seed + i, config.camera, config.size, stop_on_success=True, steps_after_success=10
            )
            for i in range(config.episodes)
        ]
        env.close()
        length = max(len(episode.frames) for episode in episodes)
        for t in range(length):
            cells = []
            for episode in episodes:
                frame = episode.frames[min(t, len(episode.frames) - 1)]
                succeeded = episode.first_success_step is not None and t >= episode.first_success_step
                cells.append(border(frame, SUCCESS_RGB if succeeded else FAILURE_RGB if t == length - 1 else (0, 0, 0)))
            segments.append(tile(cells, columns=config.episodes))
        results.append((task, sum(e.success for e in episodes), len(episodes)))
    path = write_mp4(config.out, segments, fps=20)
    for task, successes, total in results:
        print(f"{task:>12}: {successes}/{total} scripted episodes succeeded")
    print(f"video: {path}")
    return path
