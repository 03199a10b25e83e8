"""The one closed-loop rollout: evaluation, train-time evaluation, previews and videos all use it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Policy(Protocol):
    def reset(self) -> None: ...

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class Episode:
    """What happened in one episode."""

    seed: int
    success: bool
    steps: int
    total_return: float
    seconds: float
    physics_warning: str = ""
    first_success_step: int | None = None
    frames: list[np.ndarray] = field(default_factory=list, repr=False)


def rollout(
    env,
    policy: Policy,
    seed: int,
    video_camera: str | None = None,
    video_size: int | tuple[int, int] | None = None,
    stop_on_success: bool = False,
    steps_after_success: int = 0,
) -> Episode:
    """Run one episode from ``seed`` until it ends; optionally keep frames from ``video_camera``.

    With ``stop_on_success`` the episode stops ``steps_after_success`` steps after the
    first success (a few extra frames make videos readable).
    """
    start = time.perf_counter()
    observation, info = env.reset(seed=seed)
    policy.reset()
    frames = [env.render_camera_image(video_camera, video_size)] if video_camera else []
    total_return, first_success, steps = 0.0, None, 0
    for steps in range(1, env.max_steps + 1):
        observation, reward, terminated, truncated, info = env.step(policy.act(observation))
        total_return += float(reward)
        if video_camera:
            frames.append(env.render_camera_image(video_camera, video_size))
        if info["is_success"] and first_success is None:
            first_success = steps
        if terminated or truncated:
            break
        if stop_on_success and first_success is not None and steps - first_success >= steps_after_success:
            break
    return Episode(
        seed=seed,
        success=first_success is not None,
        steps=steps,
        total_return=total_return,
        seconds=time.perf_counter() - start,
        physics_warning=info.get("physics_warning", ""),
        first_success_step=first_success,
        frames=frames,
    )


SELECTION_SEED_OFFSET = 500_000
"""Checkpoint selection (during training and fine-tuning) uses held-out seeds from here on, so choosing
the best checkpoint never peeks at the seeds ``robolearn eval`` reports on (which start at offset 0)."""


def selection_episodes(env, policy, episodes: int, stop_on_success: bool = False) -> list[Episode]:
    """Closed-loop episodes of ``policy``, in eval mode, on the first ``episodes`` model-selection seeds."""
    from robolearn.envs import evaluation_seeds

    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        seeds = evaluation_seeds(episodes, offset=SELECTION_SEED_OFFSET)
        return [rollout(env, policy, seed, stop_on_success=stop_on_success) for seed in seeds]
    finally:
        if was_training:
            policy.train()
