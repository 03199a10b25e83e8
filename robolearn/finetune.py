"""``robolearn finetune``: RL in simulation takes a behaviour-cloned policy the rest of the way.

``policies/<bc>/`` (and its demonstrations) in, ``policies/<out>/`` out, in the same
format: ``robolearn eval`` and the videos read it like any policy. The loop runs
rounds: ``workers`` episodes with the current weights (exploration noise decaying
over training; optionally starting from demonstration states), then as many
updates as the update-to-data ratio asks, each on a batch that is half online
replay and half demonstrations. Success on held-out seeds is measured every
``eval_every`` env steps; the best weights are kept, a CSV and a PNG learning
curve are written, and the training state (optimizers, replay, RNG) so that
``--resume`` continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm
from tyro.conf import Positional

from robolearn import checkpoint
from robolearn.data.store import DemoStore, atomic_write_json, jsonable, library_versions
from robolearn.envs import make
from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import make_policy
from robolearn.rl.agent import METHODS, AgentConfig
from robolearn.rl.buffer import ReplayBuffer, sample_mixed
from robolearn.rl.collect import Collected, Collector, Start, demonstration_episodes, shaped_rewards
from robolearn.rollout import selection_episodes
from robolearn.train import choose_device

MODES = {"rlpd": "rlpd", "scratch": "rlpd", "ibrl": "ibrl", "residual": "residual"}
ESTIMATOR_LR = 1e-3
"""Learning rate of --refit-positions (the BC training's default, at which the estimator first learnt)."""
TRAINING_SEED_START = 200_000
"""Exploration episodes use seeds from here (below the evaluation seeds, apart from recordings)."""


@dataclass
class FinetuneConfig:
    """Fine-tune a behaviour-cloned policy with RL in simulation."""

    policy: Positional[Path]
    """The behaviour-cloned policy folder (policies/<name>)."""
    task: str | None = None
    """Task to fine-tune on; default (and the only one allowed): the policy's own task."""
    demos: Path | None = None
    """Demonstrations for the demo buffer and demo-state resets; default: the policy's training data."""
    out: Path | None = None
    """Output policy folder; default policies/<policy name>-<mode>."""
    mode: Literal["ibrl", "residual", "rlpd", "scratch"] = "ibrl"
    """ibrl: critic picks BC or RL action; residual: bounded residual on BC; rlpd: the BC-initialised
    actor fine-tuned whole; scratch: a fresh actor (RL from scratch with the same demonstrations).
    ibrl is the default: on lift from 5 demonstrations it took a 73% BC policy to 92-99% (3 seeds) in
    20,000 env steps (benchmarks/results/finetune.md)."""
    steps: int = 100_000
    """Environment steps of exploration."""
    encoder: Literal["frozen", "train"] = "frozen"
    """frozen: the BC encoder's features (fast on CPU); train: DrQ-v2, a trainable encoder on replayed pixels."""
    reward: Literal["sparse", "dense", "shaped"] = "sparse"
    """sparse: task success (1 on success, then the episode ends); dense: the task's staged reward every
    step; shaped: sparse plus potential-based shaping gamma * phi(s') - phi(s) with the staged reward as
    phi (Ng et al. 1999), which guides the critic without changing which policy is best."""
    utd: float = 1.0
    """Updates per environment step (update-to-data ratio)."""
    batch_size: int = 256
    demo_ratio: float = 0.5
    """Share of every batch drawn from the demonstrations (symmetric sampling: 0.5)."""
    lr: float = 3e-4
    gamma: float = 0.99
    n_step: int = 3
    tau: float = 0.01
    """Target critic update rate (Polyak)."""
    critics: int = AgentConfig.critics
    hidden: int = AgentConfig.hidden
    noise_start: float | None = None
    """Exploration noise std at the start; default 0.5 for scratch, 0.1 otherwise (a working BC policy
    needs little)."""
    noise_end: float = 0.05
    noise_decay: float = 0.25
    """Share of the steps over which the noise decays linearly to noise_end."""
    learning_starts: int = 0
    """Environment steps collected before the first update; default 0 (the demo buffer is there)."""
    critic_warmup: int = 1000
    """Environment steps during which only the critic learns (the actor stays as it started)."""
    residual_scale: float = AgentConfig.residual_scale
    """residual: the largest residual once handed over, in normalised action units. Larger bounds let the
    residual drift to its bound and wreck the BC policy (0.3 took lift from 70% to 0%,
    benchmarks/results/finetune_sweep.md)."""
    handover: int = 5000
    """residual: environment steps over which the residual scale ramps from 0 to residual_scale."""
    reset_from_demos: Literal["none", "uniform", "reverse"] = "reverse"
    """Start some episodes from recorded demonstration states: uniformly, or a reverse curriculum
    (late states first, widening to whole episodes over the first half of training)."""
    demo_reset_prob: float = 0.5
    """Share of episodes started from demonstration states when reset_from_demos is on."""
    asymmetric: bool | None = None
    """The critic sees the privileged simulator state; the actor still sees pixels and proprioception.
    Default: on, except for ibrl (whose critic acts at run time)."""
    bc_weight: float = AgentConfig.bc_weight
    """Weight of a behaviour-cloning loss on demonstration samples in the actor update (TD3+BC; 0: off)."""
    prior_weight: float = AgentConfig.prior_weight
    """Weight of a penalty on the actor's departure from the BC action, on every sample (residual: in
    units of --residual-scale; 0: off). Keeps a working BC policy from drifting where the critic's
    action gradient is noise. Measured with ibrl on stack from 20 demonstrations (one seed each): 0 gives
    75%, 1 gives 86%, 3 gives 77% (benchmarks/results/finetune_sweep.md); the lift runs used 0."""
    aux_weight: float = AgentConfig.aux_weight
    """Weight of an auxiliary loss predicting object positions from the actor's features (0: off)."""
    refit_positions: int = 0
    """Before every evaluation, refit a copy of the BC policy's position estimator to the simulator's object
    positions on every frame in the replay and the demonstrations (this many Adam steps; 0: off), and rebuild
    the stored features with it; the agent acts on its estimates. The BC estimator learnt from demonstrations
    and scenes; an improving agent's grasps and lifts are states it misreads. Frozen encoder and a BC policy
    with per-frame position estimates (trunk input relative or positions) only. Measured with ibrl on lift from
    2 demonstrations (BC 20%), 500 steps: 90%, 96%, 95% on 100 held-out episodes (3 seeds; section
    lift-2demos-refit of benchmarks/results/finetune.md); not yet measured on stack, so off by default."""
    eval_every: int = 2000
    """Environment steps between closed-loop evaluations (held-out seeds)."""
    eval_episodes: int = 20
    workers: int = 1
    """Exploration worker processes (episodes per round)."""
    buffer_size: int = 1_000_000
    """Replay capacity in frames (capped at what the run can fill)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    until: int | None = None
    """Stop after this many environment steps (schedules still follow --steps); continue with --resume."""
    resume: bool = False
    """Continue the run in --out from its last evaluation."""

    def __post_init__(self) -> None:
        if self.refit_positions < 0:
            raise ValueError(f"--refit-positions must be at least 0 (0: off), found {self.refit_positions}")
        if self.steps < 1 or self.batch_size < 2 or self.workers < 1 or self.eval_episodes < 1:
            raise ValueError("--steps, --workers and --eval-episodes must be positive and --batch-size at least 2")
        if not 0 <= self.demo_ratio < 1:
            raise ValueError(f"--demo-ratio must be in [0, 1), found {self.demo_ratio}")
        if self.utd <= 0:
            raise ValueError(f"--utd must be positive, found {self.utd}")
        if self.asymmetric is None:
            self.asymmetric = self.mode != "ibrl"
        if self.mode == "ibrl" and self.asymmetric:
            raise ValueError(
                "--mode ibrl chooses actions with its critic at run time, so the critic cannot see privileged "
                "simulator state; drop --asymmetric or use --mode residual or rlpd"
            )
        if self.noise_start is None:
            self.noise_start = 0.5 if self.mode == "scratch" else 0.1
        if self.out is None:
            self.out = Path("policies") / f"{Path(self.policy).name}-{self.mode}"


def exploration_noise(config: FinetuneConfig, env_steps: int) -> float:
    progress = min(env_steps / max(1.0, config.noise_decay * config.steps), 1.0)
    return config.noise_start + (config.noise_end - config.noise_start) * progress


def make_training_env(task_id: str, task_kwargs: dict | None, env_kwargs: dict, reward: str):
    settings = {key: value for key, value in env_kwargs.items() if key not in ("reward_type", "terminate_on_success")}
    return make(
        task_id,
        task_kwargs=task_kwargs,
        reward_type="sparse" if reward == "sparse" else "dense",  # shaped: the dense reward is the potential
        terminate_on_success=reward != "dense",
        **settings,
    )


def replay_rewards(episode: Collected, reward: str, gamma: float) -> np.ndarray:
    """The rewards the replay stores for ``episode`` under ``--reward``."""
    return shaped_rewards(episode, gamma) if reward == "shaped" else episode.rewards


def run(config: FinetuneConfig) -> Path:
    """Fine-tune and return the output policy folder."""
    device = choose_device(config.device)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    if out.resolve() == Path(config.policy).resolve():
        raise ValueError(f"--out {out} is the BC policy folder itself; choose another --out so the BC policy is kept")
    base_config = checkpoint.read_config(config.policy)
    if base_config["policy"] in METHODS:
        raise ValueError(
            f"{config.policy} is already an RL fine-tuned policy; fine-tune its BC policy "
            f"({base_config.get('base_policy', {}).get('path', 'the one it came from')}) or pass --resume with --out"
        )
    task = base_config.get("task") or {}
    if not task.get("id"):
        raise ValueError(f"{config.policy} has no task (trained on imported data); fine-tuning needs a robolearn task")
    if config.task is not None and config.task != task["id"]:
        raise ValueError(
            f"--task {config.task!r} does not match the policy's task {task['id']!r}: a policy fine-tunes on the "
            "task it was trained for; leave out --task or choose a policy trained on it"
        )
    demos = Path(config.demos or base_config["dataset"]["path"])
    features = FeatureSpec.from_json(base_config["features"])
    _check_demos(demos, features, task["id"])

    agent_config = AgentConfig(
        base_policy=base_config["policy"],
        base_config=base_config["policy_config"],
        encoder=config.encoder,
        hidden=config.hidden,
        critics=config.critics,
        asymmetric=config.asymmetric,
        aux_weight=config.aux_weight,
        bc_weight=config.bc_weight,
        prior_weight=config.prior_weight,
        refit_positions=config.refit_positions > 0,
        from_bc=config.mode != "scratch",
        residual_scale=config.residual_scale,
    )
    agent = make_policy(MODES[config.mode], features, agent_config)
    base_weights = checkpoint.load_policy(config.policy, "best").state_dict()
    agent.base.load_state_dict(base_weights)
    if agent.estimator is not None:  # refitting starts from the BC policy's estimator
        agent.estimator.load_state_dict(agent.base.aux_head.state_dict())
    if agent.representation is not None:
        agent.representation.load_state_dict(base_weights)
        if config.mode == "scratch":
            for encoder in agent.representation.encoders.values():
                for module in encoder.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
    agent.reset()

    potential_env = None  # shaped: an env to read the demonstrations' first potentials from their states
    if config.reward == "shaped":
        potential_env = make_training_env(task["id"], task.get("kwargs"), base_config["env"], "shaped")
    try:
        demo_episodes = demonstration_episodes(demos, agent, config.reward, potential_env)
    finally:
        if potential_env is not None:
            potential_env.close()
    fields = agent.frame_fields()
    demo_frames = sum(len(e) + 1 for e in demo_episodes)
    demo_buffer = ReplayBuffer(fields, agent.action_size, demo_frames, device, config.n_step, config.gamma)
    for episode in demo_episodes:
        demo_buffer.add_episode(
            episode.frames,
            episode.actions,
            replay_rewards(episode, config.reward, config.gamma),
            episode.terminated,
            imitate=episode.imitate,
        )
    if agent.privileged_size:
        privileged = torch.cat([torch.as_tensor(e.frames["privileged"]) for e in demo_episodes])
        state = torch.cat([torch.as_tensor(e.frames["state"]) for e in demo_episodes])
        agent.fit_critic_normalization(privileged, state)
    agent.to(device)
    max_steps = base_config.get("max_steps") or 1000
    capacity = min(config.buffer_size, config.steps + (max_steps + 1) * (config.workers + 1))
    online = ReplayBuffer(fields, agent.action_size, capacity, device, config.n_step, config.gamma)

    critic_optimizer = torch.optim.Adam(agent.critic_parameters(), lr=config.lr)
    actor_optimizer = torch.optim.Adam(agent.actor_parameters(), lr=config.lr)
    optimizers = (critic_optimizer, actor_optimizer)
    estimator_optimizer = (
        None if agent.estimator is None else torch.optim.Adam(agent.estimator.parameters(), lr=ESTIMATOR_LR)
    )
    saved_optimizers = (*optimizers, estimator_optimizer)
    sampler = torch.Generator(device=device).manual_seed(config.seed)
    starts = np.random.default_rng(config.seed)
    progress_state = {"env_steps": 0, "updates": 0, "episodes": 0, "best_success": -1.0, "curve": [], "seconds": 0.0}
    extra = {
        "task": task,
        "env": base_config["env"],
        "control_rate": base_config.get("control_rate"),
        "max_steps": base_config.get("max_steps"),
        "dataset": {"path": str(demos), "episodes": len(demo_episodes)},
        "base_policy": {"path": str(config.policy), "policy": base_config["policy"]},
        "finetune": jsonable(asdict(config)),
        "device": str(device),
        "versions": library_versions() | {"torch": torch.__version__},
    }
    if config.resume:
        progress_state = _restore(out, config, agent, online, saved_optimizers, sampler, starts)
        if agent.estimator is not None:  # the demonstrations were perceived with the estimator as it started
            agent.rebuild_features(demo_buffer)
    elif (out / "training_state.json").exists():
        raise ValueError(f"{out} already holds a fine-tuning run; pass --resume to continue it or choose another --out")
    checkpoint.write_config(out, agent, extra)

    make_env = partial(make_training_env, task["id"], task.get("kwargs"), base_config["env"], config.reward)
    spec = {"policy": agent.name, "features": features.to_json(), "config": agent.config_json()}
    uses_demo_starts = config.reset_from_demos != "none"
    collector = Collector(make_env, spec, demos if uses_demo_starts else None, config.workers)
    demo_starts = collector.demos  # the collector's own copy: the states are read once
    eval_env = make(task["id"], task_kwargs=task.get("kwargs") or None, **base_config["env"])
    log = open(out / "log.jsonl", "a")
    state = progress_state
    progress = tqdm(total=config.steps, initial=state["env_steps"], desc=f"finetune {config.mode}", unit="step")
    try:
        if not state["curve"]:
            bc_success, bc_return = _evaluate(eval_env, agent.base, config.eval_episodes)
            success, mean_return = _evaluate(eval_env, agent, config.eval_episodes)
            state["bc_success"] = bc_success
            state["best_success"] = success
            checkpoint.save_weights(out / "best.safetensors", agent.state_dict())
            _record(state, out, log, success, mean_return, train_success=None, metrics={"bc_success": bc_success})
            progress.write(
                f"start: BC policy {bc_success:.0%}, agent {success:.0%} on {config.eval_episodes} held-out episodes"
            )
        started, metrics = time.perf_counter() - state["seconds"], {}
        recent = state.setdefault("recent", [])
        next_eval = (state["env_steps"] // config.eval_every + 1) * config.eval_every
        window_start, window_updates = time.perf_counter(), 0
        last = min(config.until or config.steps, config.steps)
        while state["env_steps"] < last:
            noise = exploration_noise(config, state["env_steps"])
            if config.mode == "residual":
                agent.scale.fill_(config.residual_scale * min(1.0, state["env_steps"] / max(1, config.handover)))
            jobs = []
            for _ in range(config.workers):
                seed = TRAINING_SEED_START + config.seed * 100_000 + state["episodes"] + len(jobs)
                demo = None
                if demo_starts is not None and starts.random() < config.demo_reset_prob:
                    window = 1.0
                    if config.reset_from_demos == "reverse":
                        window = min(1.0, 0.1 + 0.9 * state["env_steps"] / max(1.0, 0.5 * config.steps))
                    demo = demo_starts.sample(starts, window)
                jobs.append((Start(seed, demo), noise, seed))
            for episode in collector.collect(agent, jobs):
                rewards = replay_rewards(episode, config.reward, config.gamma)
                online.add_episode(episode.frames, episode.actions, rewards, episode.terminated)
                state["env_steps"] += len(episode)
                state["episodes"] += 1
                recent[:] = (recent + [episode.success])[-20:]
                progress.update(len(episode))
            if state["env_steps"] >= config.learning_starts:
                due = int(config.utd * state["env_steps"]) - state["updates"]
                update_actor = state["env_steps"] > config.critic_warmup
                for _ in range(max(due, 0)):
                    batch = sample_mixed(online, demo_buffer, config.batch_size, config.demo_ratio, sampler)
                    metrics = agent.update(batch, optimizers, noise, update_actor, config.tau, sampler)
                    state["updates"] += 1
                    window_updates += 1
            now = time.perf_counter()
            progress.set_postfix(
                success=f"{state['curve'][-1]['success']:.0%}",
                train=f"{np.mean(recent):.0%}",
                ups=f"{window_updates / max(now - window_start, 1e-9):.0f}",
                noise=f"{noise:.2f}",
            )
            if now - window_start > 30:
                window_start, window_updates = now, 0
            if state["env_steps"] >= next_eval or state["env_steps"] >= last:
                next_eval = (state["env_steps"] // config.eval_every + 1) * config.eval_every
                if estimator_optimizer is not None:
                    metrics = metrics | agent.refit_estimator(
                        (online, demo_buffer), config.refit_positions, config.batch_size, estimator_optimizer, sampler
                    )
                success, mean_return = _evaluate(eval_env, agent, config.eval_episodes)
                state["seconds"] = time.perf_counter() - started
                _record(state, out, log, success, mean_return, float(np.mean(recent)), metrics | {"noise": noise})
                if success > state["best_success"]:
                    state["best_success"] = success
                    checkpoint.save_weights(out / "best.safetensors", agent.state_dict())
                _save(out, agent, online, saved_optimizers, sampler, starts, state)
                progress.write(
                    f"env step {state['env_steps']}: success {success:.0%} (best {state['best_success']:.0%}), "
                    f"return {mean_return:.2f}, {state['updates']} updates, {state['seconds']:.0f} s"
                )
    finally:
        progress.close()
        log.close()
        collector.close()
        eval_env.close()
    return out


def _check_demos(demos: Path, features: FeatureSpec, task_id: str) -> None:
    store = DemoStore(demos)
    if (store.meta.get("task") or {}).get("id") != task_id:
        raise ValueError(
            f"--demos {demos} holds task {(store.meta.get('task') or {}).get('id')!r}, the policy's task is {task_id!r}"
        )
    found = FeatureSpec.from_json(store.meta["features"])
    for key, feature in features.observations.items():
        if key not in found.observations or tuple(found.observations[key].shape) != tuple(feature.shape):
            shape = found.observations[key].shape if key in found.observations else "nothing"
            raise ValueError(
                f"--demos {demos}: the policy needs {key} of shape {tuple(feature.shape)}, the data has {shape}; "
                "record demonstrations with the policy's cameras and image size"
            )
    if len(store) == 0:
        raise ValueError(f"--demos {demos} holds no episodes")


def _evaluate(env, policy, episodes: int) -> tuple[float, float]:
    """Success rate and mean return (episodes end at success) on the held-out seeds kept for model selection."""
    results = selection_episodes(env, policy, episodes, stop_on_success=True)
    return float(np.mean([r.success for r in results])), float(np.mean([r.total_return for r in results]))


def _record(
    state: dict, out: Path, log, success: float, mean_return: float, train_success: float | None, metrics: dict
) -> None:
    row = {
        "env_steps": state["env_steps"],
        "episodes": state["episodes"],
        "updates": state["updates"],
        "seconds": round(state["seconds"], 1),
        "success": success,
        "mean_return": mean_return,
        "train_success": train_success,
    }
    state["curve"].append(row)
    log.write(json.dumps(row | {key: v for key, v in metrics.items() if isinstance(v, (int, float))}) + "\n")
    log.flush()
    write_curve(out, state["curve"])


def write_curve(out: Path, curve: list[dict]) -> None:
    """``curve.csv`` and ``curve.png``: success and return against environment steps."""
    with open(out / "curve.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    from robolearn.plots import plot_curves

    steps = [row["env_steps"] for row in curve]
    plot_curves(
        out / "curve.png",
        {"held-out success": [(steps, [row["success"] for row in curve])]},
        {"held-out return": [(steps, [row["mean_return"] for row in curve])]},
        ylabels=("success rate", "mean return (to success)"),
        title=out.name,
    )


OPTIMIZERS = ("critic", "actor", "estimator")
"""The names the training state keeps the optimizers under, in the order ``run`` passes them."""


def _save(out, agent, online, optimizers, sampler, starts, state) -> None:
    checkpoint.save_weights(out / "model.safetensors", agent.state_dict())
    tensors = online.state_tensors("replay")
    meta = {}
    for name, optimizer in zip(OPTIMIZERS, optimizers):
        if optimizer is not None:
            own, meta[f"{name}_optimizer"] = checkpoint.optimizer_tensors(optimizer)
            tensors |= {f"{name}_{key}": value for key, value in own.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampler"] = sampler.get_state()
    checkpoint.save_weights(out / "training_state.safetensors", tensors)
    atomic_write_json(
        out / "training_state.json",
        jsonable(
            state
            | {
                "replay": online.state_json(),
                **meta,
                "starts_rng": starts.bit_generator.state,
            }
        ),
    )


def settings_differences(out: Path, config: FinetuneConfig) -> list[str]:
    """How ``config`` differs from the run saved in ``out`` ("key: saved ..., now ..."), leaving out the
    settings a resumed run may change (where it stops, workers, device)."""
    saved = json.loads((out / "config.json").read_text()).get("finetune", {})
    return [
        f"{key}: saved {saved.get(key)!r}, now {value!r}"
        for key, value in jsonable(asdict(config)).items()
        if key not in ("until", "resume", "workers", "device") and saved.get(key) != value
    ]


def _restore(out, config, agent, online, optimizers, sampler, starts) -> dict:
    path = out / "training_state.json"
    if not path.is_file():
        raise ValueError(f"--resume: {out} holds no fine-tuning state (training_state.json); run without --resume")
    if differences := settings_differences(out, config):
        raise ValueError(f"--resume with settings that differ from the run in {out}: " + "; ".join(differences))
    state = json.loads(path.read_text())
    agent.load_state_dict(checkpoint.load_weights(out / "model.safetensors"))
    tensors = checkpoint.load_weights(out / "training_state.safetensors")
    online.restore(
        {key: value.to(online.device) for key, value in tensors.items() if key.startswith("replay.")},
        "replay",
        state.pop("replay"),
    )
    for name, optimizer in zip(OPTIMIZERS, optimizers):
        if optimizer is not None:
            prefix = f"{name}_"
            own = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
            checkpoint.restore_optimizer(optimizer, own, state.pop(f"{prefix}optimizer"))
    torch.set_rng_state(tensors["rng.torch"])
    sampler.set_state(tensors["rng.sampler"])
    starts.bit_generator.state = state.pop("starts_rng")
    return state


__all__ = ["FinetuneConfig", "run"]
