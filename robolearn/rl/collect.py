"""Data for fine-tuning: exploration episodes (in this process or in workers) and demonstrations.

An episode starts either from a seed, as every robolearn episode does, or from a
state recorded in a demonstration (Zhu et al. 2018): the env is reset with the seed
and then set to the recorded simulator state, exactly. Each frame the agent
``perceive``s is what the replay stores, so exploration and demonstrations fill
the same buffers with the same fields.

Worker processes (``spawn``, one env and one CPU copy of the agent each) receive
the agent's current weights with every round of episodes, so all episodes of a
round act with the same weights whichever worker runs them.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from robolearn.data.store import DemoStore


@dataclass(frozen=True)
class Start:
    """Where an episode starts: a seed, and optionally a demonstration state (episode index, step)."""

    seed: int
    demo: tuple[int, int] | None = None


@dataclass
class Collected:
    """One episode as the replay stores it: T + 1 frames, T actions and rewards."""

    frames: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    success: bool
    start: Start
    imitate: np.ndarray | None = None
    """(T,) bool for demonstrations: the actions to imitate (not ``robolearn record --perturb``'s)."""
    potentials: np.ndarray | None = None
    """(T + 1,) the dense reward of each frame's state (episodes in a dense-reward env; for shaping)."""

    def __len__(self) -> int:
        return len(self.actions)


class DemoStates:
    """Recorded simulator states of a dataset's episodes, loaded on first use."""

    def __init__(self, dataset: str | Path) -> None:
        self.store = DemoStore(dataset)
        self.paths = self.store.episode_paths()
        self._states: dict[int, np.ndarray] = {}
        self._lengths: list[int] | None = None

    def states(self, episode: int) -> np.ndarray:
        if episode not in self._states:
            with np.load(self.paths[episode], allow_pickle=False) as archive:
                states, successes = archive["states"], archive["successes"]
            end = int(np.argmax(successes)) + 1 if successes.any() else len(successes)
            self._states[episode] = states[:end]  # up to the first success: later states are already solved
        return self._states[episode]

    def lengths(self) -> list[int]:
        """Usable start steps per episode (before its first success)."""
        if self._lengths is None:
            self._lengths = [len(self.states(i)) for i in range(len(self.paths))]
        return self._lengths

    def sample(self, generator: np.random.Generator, window: float = 1.0) -> tuple[int, int]:
        """A random (episode, step); ``window`` < 1 keeps the step within the last ``window`` share
        of the episode before its success (the reverse curriculum widens it over training)."""
        episode = int(generator.integers(len(self.paths)))
        length = self.lengths()[episode]
        earliest = int(np.floor((1.0 - window) * (length - 1)))
        return episode, int(generator.integers(earliest, length))


def run_episode(env, agent, start: Start, noise: float, noise_seed: int, demos: DemoStates | None = None) -> Collected:
    """One episode acting with ``agent`` plus Gaussian noise of std ``noise``."""
    observation, info = env.reset(seed=start.seed)
    if start.demo is not None:
        if demos is None:
            raise ValueError("a demonstration start needs the dataset's states")
        episode, step = start.demo
        observation = env.set_state(demos.states(episode)[step])
    agent.reset()
    generator = torch.Generator().manual_seed(noise_seed)
    start_potential = env.dense_reward() if env.reward_type == "dense" else None
    frames, actions, rewards = [agent.perceive(observation)], [], []
    terminated = success = False
    while True:
        action = agent.decide(frames[-1], noise, generator)
        observation, reward, terminated, truncated, info = env.step(action)
        frames.append(agent.perceive(observation))
        actions.append(action)
        rewards.append(reward)
        success = success or info["is_success"]
        if terminated or truncated or env.steps >= env.max_steps:
            break
    stacked = {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
    rewards = np.asarray(rewards, np.float32)
    potentials = None if start_potential is None else np.concatenate([[start_potential], rewards]).astype(np.float32)
    return Collected(stacked, np.stack(actions), rewards, bool(terminated), bool(success), start, potentials=potentials)


def shaped_rewards(episode: Collected, gamma: float) -> np.ndarray:
    """The sparse success reward plus potential-based shaping ``gamma * phi(s') - phi(s)`` with the dense
    reward as ``phi`` (Ng et al. 1999: the best policy stays the best). The episode must end at its
    success, as fine-tuning's episodes and demonstrations do."""
    if episode.potentials is None:
        raise ValueError("shaping needs the episode's potentials: collect it in a dense-reward env")
    sparse = np.zeros(len(episode), np.float32)
    sparse[-1] = float(episode.success and episode.terminated)
    return (sparse + gamma * episode.potentials[1:] - episode.potentials[:-1]).astype(np.float32)


def demonstration_episodes(dataset: str | Path, agent, reward: str, env=None) -> list[Collected]:
    """The dataset's episodes as replay episodes: frames perceived by ``agent`` (so the BC features and
    actions are exactly those it would compute), truncated at the first success (a terminal state).
    With reward ``shaped``, ``env`` (one of the task's) gives each episode's first potential from its
    recorded state; the recorded dense rewards are the others."""
    store = DemoStore(dataset)
    recorded_reward = store.meta["env"].get("reward_type", "dense")
    if reward in ("dense", "shaped") and recorded_reward != "dense":
        raise ValueError(
            f"{dataset} was recorded with {recorded_reward} rewards, but --reward {reward} needs dense ones; "
            "use --reward sparse or record with dense rewards"
        )
    if reward == "shaped" and env is None:
        raise ValueError("shaped rewards need an env of the task to compute the demonstrations' first potentials")
    episodes = []
    for index in range(len(store)):
        episode = store.load(index)
        success = episode.success
        steps = int(np.argmax(episode.successes)) + 1 if success else len(episode) - 1
        if steps < 1:
            continue
        agent.reset()
        frames = [
            agent.perceive({key: value[t] for key, value in episode.observations.items()})
            for t in range(steps + 1 if not success else steps)
        ]
        if success:
            frames.append(frames[-1])  # the terminal frame: stored, never bootstrapped from
        rewards = episode.successes[:steps].astype(np.float32) if reward == "sparse" else episode.rewards[:steps]
        potentials = None
        if reward == "shaped":
            env.set_state(episode.states[0])
            potentials = np.concatenate([[env.dense_reward()], rewards]).astype(np.float32)
        stacked = {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
        episodes.append(
            Collected(
                stacked,
                episode.actions[:steps],
                np.asarray(rewards, np.float32),
                success,
                success,
                Start(-1),
                episode.imitate[:steps],
                potentials,
            )
        )
    if not episodes:
        raise ValueError(f"{dataset} has no usable demonstrations (every episode is empty)")
    return episodes


class Collector:
    """Runs rounds of episodes with the agent's current weights, in this process or in ``workers``."""

    def __init__(self, make_env, agent_spec: dict, dataset: Path | None, workers: int) -> None:
        self.workers = workers
        self.demos = DemoStates(dataset) if dataset is not None else None
        if workers <= 1:
            self.env, self.pool = make_env(), None
        else:
            context = multiprocessing.get_context("spawn")
            self.env = None
            self.pool = context.Pool(workers, initializer=_start_worker, initargs=(make_env, agent_spec, dataset))

    def collect(self, agent, jobs: list[tuple[Start, float, int]]) -> list[Collected]:
        """Run ``jobs`` (start, noise std, noise seed); results in job order."""
        if self.pool is None:
            was_training = agent.training
            agent.eval()
            episodes = [run_episode(self.env, agent, start, noise, seed, self.demos) for start, noise, seed in jobs]
            agent.train(was_training)
            return episodes
        weights = save_tensors({key: value.detach().cpu().contiguous() for key, value in agent.state_dict().items()})
        return self.pool.map(_worker_episode, [(weights, job) for job in jobs])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        if self.env is not None:
            self.env.close()


_worker: dict = {}


def _start_worker(make_env, agent_spec: dict, dataset: Path | None) -> None:
    import robolearn  # noqa: F401  (headless GL before mujoco in a fresh process)
    from robolearn.envs.spec import FeatureSpec
    from robolearn.policies.base import POLICIES, make_policy

    torch.set_num_threads(1)
    features = FeatureSpec.from_json(agent_spec["features"])
    make_policy("bc", features)  # fills the registry
    config = POLICIES[agent_spec["policy"]].config_from_json(agent_spec["config"])
    _worker["agent"] = make_policy(agent_spec["policy"], features, config).eval()
    _worker["env"] = make_env()
    _worker["demos"] = DemoStates(dataset) if dataset is not None else None


def _worker_episode(payload: tuple[bytes, tuple[Start, float, int]]) -> Collected:
    weights, (start, noise, seed) = payload
    agent = _worker["agent"]
    agent.load_state_dict(load_tensors(weights))
    return run_episode(_worker["env"], agent, start, noise, seed, _worker["demos"])
