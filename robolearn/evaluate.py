"""``robolearn eval``: closed-loop evaluation of a policy folder on held-out seeds, with videos.

Episodes are indexed by seed (``evaluation_seeds``), never by the order in which
workers finish, so a run is reproducible from its seed whatever the number of
workers. Workers are separate processes started with ``spawn``: each opens its own
GL context after it starts (forked EGL contexts crash). Results go to
``policies/<name>/eval/<label>/``: one JSON per episode, ``metrics.json``, and with
``--video`` one mp4 per filmed episode plus ``grid.mp4`` tiling them.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm
from tyro.conf import Positional

from robolearn import checkpoint
from robolearn.envs import evaluation_seeds, make
from robolearn.policies.bc import PER_FRAME_INPUTS
from robolearn.rollout import Episode, rollout
from robolearn.video import border, tile, write_mp4
from robolearn.video_text import draw_text


@dataclass
class EvalConfig:
    """Evaluate a policy in closed loop on held-out seeds and write a results table and videos."""

    policy: Positional[Path]
    """The policy folder (policies/<name>)."""
    episodes: int = 50
    """Episodes, on held-out seeds."""
    workers: int = 1
    """Parallel worker processes."""
    seed: int = 0
    """Offset into the held-out seeds: episode i uses seed 1_000_000 + seed + i."""
    weights: Literal["best", "ema", "model"] = "best"
    """Which weights: best by success during training, the EMA, or the last raw weights."""
    video: bool = False
    """Write an mp4 per filmed episode and a tiled grid."""
    video_episodes: int = 8
    """How many episodes (the first ones) to film; -1 films all."""
    video_camera: str = "view"
    """Camera for the videos (view, front, wrist): it may differ from the policy's cameras."""
    video_size: int = 256
    """Height and width of video frames in pixels."""
    positions: Literal["estimated", "true"] = "estimated"
    """What a bc policy with per-frame position estimates (trunk input relative or positions), or an RL agent
    fine-tuned from one with a frozen encoder, acts on: its estimates from the pixels, or the simulator's true
    object positions. ``true`` is a diagnostic: the difference in success is what perception costs; what
    remains fails in control."""
    label: str | None = None
    """Name of the results folder under <policy>/eval/; default <weights>-seed<seed>-<episodes>, with
    -true-positions appended for --positions true."""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 1:
            raise ValueError(f"--episodes and --workers must be at least 1, found {self.episodes}, {self.workers}")
        if self.label is None:
            self.label = f"{self.weights}-seed{self.seed}-{self.episodes}"
            if self.positions == "true":
                self.label += "-true-positions"


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a success rate (95% for z = 1.96)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


_worker: dict = {}


def _start_worker(folder: str, weights: str, process: bool = False, true_positions: bool = False) -> None:
    """Load the policy and build the env once per worker process (or once in-process)."""
    import torch

    import robolearn  # noqa: F401  (headless GL before mujoco in a fresh process)

    if process:  # Ctrl-C reaches the whole process group: the main process alone answers it
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    torch.set_num_threads(1)
    _worker["policy"] = checkpoint.load_policy(folder, weights)
    if true_positions:
        act_on_true_positions(_worker["policy"])
    _worker["env"] = env_for_policy(checkpoint.read_config(folder))


def _run_episode(job: tuple[int, bool], video: tuple[str, int]) -> Episode:
    seed, film = job
    camera, size = video
    return rollout(_worker["env"], _worker["policy"], seed, camera if film else None, size)


def act_on_true_positions(policy) -> None:
    """Have a bc policy, or an RL agent's frozen bc base (whose estimates its features are made of), act on
    the simulator's object positions instead of its per-frame estimates."""
    getattr(policy, "base", policy).true_positions = True


def _check_true_positions(folder: Path, policy_config: dict) -> None:
    """Refuse --positions true for a policy that estimates no positions (before any worker starts)."""
    family, settings = policy_config.get("policy"), policy_config.get("policy_config") or {}
    found = f"policy {family!r}"
    if family != "bc" and settings.get("base_policy") == "bc":  # an RL agent: its base estimates the positions
        if settings.get("encoder") == "train":
            found += " with a trainable encoder (its features are not made of the base policy's estimates)"
            settings = {}
        else:
            found += " on a bc policy"
            settings = settings.get("base_config") or {}
    trunk_input = settings.get("trunk_input")
    if trunk_input not in PER_FRAME_INPUTS:
        found += f" with trunk input {trunk_input!r}" if trunk_input else ""
        raise ValueError(
            f"--positions true replaces a bc policy's per-frame object-position estimates with the true positions; "
            f"{folder} is a {found}, which has none. Use --positions estimated, or evaluate a policy trained with "
            "--bc.trunk-input relative (the default on robolearn tasks) or fine-tuned from one with a frozen encoder"
        )


def env_for_policy(config: dict):
    task = config.get("task") or {}
    if not task.get("id"):
        raise ValueError(
            "this policy was trained on a dataset with no task (an import); evaluation needs a robolearn task: "
            "re-import the demonstrations with --task"
        )
    return make(task["id"], task_kwargs=task.get("kwargs") or None, **config["env"])


def run(config: EvalConfig) -> dict:
    """Evaluate, write the results folder and return the summary metrics."""
    folder = Path(config.policy)
    policy_config = checkpoint.read_config(folder)
    true_positions = config.positions == "true"
    if true_positions:
        _check_true_positions(folder, policy_config)
    seeds = evaluation_seeds(config.episodes, offset=config.seed)
    filmed = len(seeds) if config.video_episodes < 0 else config.video_episodes
    jobs = [(seed, config.video and i < filmed) for i, seed in enumerate(seeds)]
    video = (config.video_camera, config.video_size)
    start = time.perf_counter()
    episodes: list[Episode] = []
    interrupted = False
    with tqdm(total=len(jobs), desc="evaluate", unit="episode") as progress:
        try:
            if config.workers == 1:
                _start_worker(str(folder), config.weights, true_positions=true_positions)
                try:
                    for job in jobs:
                        episodes.append(_run_episode(job, video))
                        progress.update()
                finally:
                    _worker.pop("env").close()
            else:
                context = multiprocessing.get_context("spawn")
                arguments = (str(folder), config.weights, True, true_positions)
                with context.Pool(config.workers, initializer=_start_worker, initargs=arguments) as pool:
                    for episode in pool.imap_unordered(partial(_run_episode, video=video), jobs):
                        episodes.append(episode)
                        progress.update()
        except KeyboardInterrupt:  # the workers are stopped on leaving the pool; keep what finished
            interrupted = True
    seconds = time.perf_counter() - start
    episodes.sort(key=lambda episode: episode.seed)
    if interrupted and not episodes:
        raise KeyboardInterrupt(f"before any of {len(jobs)} episodes finished")
    return _write_results(folder / "eval" / config.label, config, policy_config, episodes, seconds, interrupted)


def _write_results(
    out: Path, config: EvalConfig, policy_config: dict, episodes: list[Episode], seconds: float, interrupted: bool
) -> dict:
    # A rerun under a label replaces that label's results: no episode or film of an earlier run stays.
    for stale in [*out.glob("episodes/seed_*.json"), *out.glob("videos/seed_*.mp4"), out / "grid.mp4"]:
        stale.unlink(missing_ok=True)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    for episode in episodes:
        record = {k: v for k, v in asdict(episode).items() if k != "frames"}
        (out / "episodes" / f"seed_{episode.seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    metrics = {
        "policy": str(config.policy),
        "task": (policy_config.get("task") or {}).get("id"),
        "weights": config.weights,
        "episodes": len(episodes),
        "seed": config.seed,
        "seeds": [episodes[0].seed, episodes[-1].seed],
        "success_rate": successes / len(episodes),
        "success_ci95": [round(low, 4), round(high, 4)],
        "mean_return": float(np.mean([e.total_return for e in episodes])),
        "mean_episode_length": float(np.mean([e.steps for e in episodes])),
        "mean_steps_to_success": float(np.mean([e.first_success_step for e in episodes if e.success]))
        if successes
        else None,
        "physics_warnings": sum(bool(e.physics_warning) for e in episodes),
        "seconds": round(seconds, 2),
        "workers": config.workers,
        "positions": config.positions,
    }
    if interrupted:  # by Ctrl-C: the episodes that finished, not a prefix of the seeds
        metrics |= {"interrupted": True, "episodes_planned": config.episodes}
    videos = _write_videos(out, episodes) if config.video else []
    if videos:
        metrics["videos"] = [str(path) for path in videos]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\n{'task':>14}: {metrics['task']}   policy: {config.policy} ({config.weights} weights)")
    if config.positions == "true":
        print(f"{'positions':>14}: true (the simulator's, in place of the policy's estimates)")
    print(
        f"{'success rate':>14}: {metrics['success_rate']:.1%}  (95% CI {low:.1%} - {high:.1%}, {len(episodes)} episodes)"
    )
    print(f"{'mean return':>14}: {metrics['mean_return']:.2f}")
    print(f"{'episode length':>14}: {metrics['mean_episode_length']:.1f} steps")
    print(f"{'time':>14}: {seconds:.1f} s with {config.workers} worker(s)")
    if interrupted:
        print(f"{'interrupted':>14}: {len(episodes)} of {config.episodes} episodes finished; these are their results")
    print(f"{'results':>14}: {out}")
    if videos:
        print(f"{'videos':>14}: {out / 'videos'} (grid: {out / 'grid.mp4'})")
    return metrics


def _write_videos(out: Path, episodes: list[Episode]) -> list[Path]:
    filmed = [e for e in episodes if e.frames]
    if not filmed:
        return []
    annotated = [[_annotate(frame, e, t) for t, frame in enumerate(e.frames)] for e in filmed]
    paths = [write_mp4(out / "videos" / f"seed_{e.seed}.mp4", frames) for e, frames in zip(filmed, annotated)]
    length = max(len(frames) for frames in annotated)
    columns = math.ceil(math.sqrt(len(annotated)))
    grid = [tile([frames[min(t, len(frames) - 1)] for frames in annotated], columns) for t in range(length)]
    paths.append(write_mp4(out / "grid.mp4", grid))
    return paths


def _annotate(frame: np.ndarray, episode: Episode, step: int) -> np.ndarray:
    succeeded = episode.first_success_step is not None and step >= episode.first_success_step
    status = "success" if succeeded else ("fail" if step == len(episode.frames) - 1 else "")
    text = f"seed {episode.seed} step {step} {status}".strip()
    framed = draw_text(frame, text, scale=max(1, frame.shape[0] // 128))
    if succeeded:
        return border(framed, (40, 200, 60), width=max(2, frame.shape[0] // 64))
    if status == "fail":
        return border(framed, (220, 40, 40), width=max(2, frame.shape[0] // 64))
    return framed
