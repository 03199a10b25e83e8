"""Turning env steps into stored episodes: used by scripted recording and teleoperation alike."""

from __future__ import annotations

import time

import numpy as np

from robolearn.data.store import Episode


class EpisodeRecorder:
    """Collects one episode step by step: call ``step`` after every ``env.step``, then ``finish``.

    It stores the observation *before* each action and the simulator state before each
    action plus the final one, so an episode can be replayed exactly from its states.
    """

    def __init__(self, env, observation: dict[str, np.ndarray], device: str) -> None:
        self.env = env
        self.device = device
        self.started = time.time()
        self.observations: dict[str, list[np.ndarray]] = {key: [] for key in observation}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.successes: list[bool] = []
        self.perturbed: list[bool] = []
        self.states: list[np.ndarray] = [env.get_state()]
        self._pending = observation
        self.physics_warning = ""

    def step(self, action: np.ndarray, observation: dict, reward: float, info: dict, perturbed: bool = False) -> None:
        """Record that ``action`` was taken from the pending observation and led to ``observation``
        (``perturbed``: it was a scripted perturbation, not a demonstration)."""
        for key, value in self._pending.items():
            self.observations[key].append(value)
        self.actions.append(np.asarray(action, np.float32))
        self.rewards.append(float(reward))
        self.successes.append(bool(info["is_success"]))
        self.perturbed.append(bool(perturbed))
        self.states.append(self.env.get_state())
        self.physics_warning = info.get("physics_warning", "") or self.physics_warning
        self._pending = observation

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return any(self.successes)

    def finish(self, **info) -> Episode:
        """The recorded episode; ``info`` entries are stored with it (seed, outcome, ...)."""
        if not self.actions:
            raise ValueError("cannot store an episode with no steps")
        first_success = self.successes.index(True) if self.success else None
        return Episode(
            actions=np.stack(self.actions),
            observations={key: np.stack(values) for key, values in self.observations.items()},
            states=np.stack(self.states),
            rewards=np.asarray(self.rewards, np.float32),
            successes=np.asarray(self.successes, bool),
            info={
                "seed": self.env.episode_seed,
                "device": self.device,
                "success": self.success,
                "steps": len(self.actions),
                "first_success_step": first_success,
                "physics_warning": self.physics_warning,
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
                "wall_seconds": round(time.time() - self.started, 3),
                "perturbed_steps": sum(self.perturbed),
                **info,
            },
            perturbed=np.asarray(self.perturbed, bool) if any(self.perturbed) else None,
        )


def record_episode(env, policy, seed: int, device: str, steps_after_success: int | None = 10) -> Episode:
    """Run ``policy`` for one episode from ``seed`` and return it as an ``Episode``.

    With ``steps_after_success`` set, the episode ends that many steps after the first
    success, so demonstrations end close to the goal rather than idling to the time limit.
    """
    observation, _ = env.reset(seed=seed)
    policy.reset()
    recorder = EpisodeRecorder(env, observation, device)
    for _ in range(env.max_steps):
        action = np.asarray(policy.act(observation), np.float32)
        observation, reward, terminated, truncated, info = env.step(action)
        recorder.step(action, observation, reward, info, getattr(policy, "perturbed", False))
        if terminated or truncated:
            break
        if steps_after_success is not None and recorder.success:
            if len(recorder) - 1 - recorder.successes.index(True) >= steps_after_success:
                break
    return recorder.finish()
