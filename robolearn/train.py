"""``robolearn train``: the stage that turns ``demos/<name>/`` into ``policies/<name>/``.

Everything the policy needs to know (feature spec, task, cameras, image size,
normalisation) comes from the dataset folder and goes into the policy folder.
The loop: batches gathered on the device from preloaded uint8 tensors, bf16
autocast on CUDA, AdamW with warm-up and a cosine schedule, gradient clipping,
an exponential moving average of the weights, a validation loss on held-out
episodes, periodic closed-loop evaluation (best checkpoint by success), and a
resumable training state. Under ``torchrun --nproc_per_node=N`` it trains with
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and rank 0 writes the folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tyro.conf import Positional

from robolearn import checkpoint
from robolearn.data.loader import EpisodeBatches, StreamingBatches, available_memory, estimated_bytes, split_episodes
from robolearn.data.store import DemoStore, atomic_write_json, jsonable, library_versions, read_arrays
from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import make_policy, mixed_precision
from robolearn.policies.bc import BCConfig


@dataclass
class TrainConfig:
    """Train a policy on a dataset of demonstrations."""

    dataset: Positional[Path]
    """The dataset folder (demos/<name>)."""
    policy: Literal["bc"] = "bc"
    """Policy family."""
    out: Path | None = None
    """Policy folder; default policies/<dataset name>-<policy>."""
    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 64
    """Samples per step (per process under torchrun)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), reached after warm-up, then cosine decay to lr / 20."""
    weight_decay: float = 1e-4
    warmup: int = 500
    """Linear warm-up steps."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 turns it off)."""
    ema: float = 0.995
    """Decay of the exponential moving average of the weights."""
    validation_fraction: float = 0.1
    """Share of episodes held out for the validation loss (split by episode)."""
    eval_every: int = 2_000
    """Closed-loop evaluation every this many steps (0: only at the end, -1: never)."""
    eval_episodes: int = 20
    """Episodes per closed-loop evaluation during training (held-out seeds)."""
    log_every: int = 100
    save_every: int = 1_000
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto: CUDA, then MPS, then CPU."""
    data: Literal["auto", "memory", "stream"] = "auto"
    """Load the dataset once onto the device (memory), stream it with worker processes, or choose by size."""
    data_workers: int = 2
    """Worker processes when streaming."""
    scenes: int | None = None
    """Labelled scenes of the task (robolearn.data.scenes; --scene-source says where from) rendered once,
    cached in the dataset folder, and used for the auxiliary position loss alongside the demonstrations:
    a few thousand teach the position estimator of --bc.trunk-input relative or positions what fifty
    demonstrations cannot (0: none; None, the default: 5,000 when the policy has that estimator and the
    dataset names its task, else none)."""
    scene_source: Literal["random", "operator", "both"] = "random"
    """Where --scenes come from: random arm poses over fresh layouts, frames of the task's scripted operator
    knocked off course now and then (a cube in the fingers above another, the gripper hiding what it
    reaches for: what the policy will see), or half of each (robolearn.data.scenes)."""
    scene_batch: int = 64
    """Scenes per step (with --scenes)."""
    seed: int = 0
    resume: bool = False
    """Continue from the training state in --out (exactly, on CPU)."""
    until: int | None = None
    """Stop after this step as if interrupted (for time-boxed jobs); continue later with --resume."""
    bc: BCConfig = field(default_factory=BCConfig)
    """Settings of the bc policy."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"--steps and --batch-size must be positive, found {self.steps} and {self.batch_size}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"--validation-fraction must be in [0, 1), found {self.validation_fraction}")
        if self.out is None:
            self.out = Path("policies") / f"{Path(self.dataset).name}-{self.policy}"


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device auto or cpu")
    return torch.device(name)


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def check_dataset_fits_task(meta: dict, features: FeatureSpec, task_id: str) -> None:
    """Refuse, before the first step, data that does not match the task it claims (expected vs found)."""
    from robolearn.envs import make

    env = make(task_id, **meta["env"])
    expected = env.features
    env.close()
    problems = []
    if tuple(expected.action.shape) != tuple(features.action.shape):
        problems.append(f"action size: task expects {expected.action.shape}, dataset has {features.action.shape}")
    if expected.cameras != features.cameras:
        problems.append(f"cameras: task env gives {list(expected.cameras)}, dataset has {list(features.cameras)}")
    for name, feature in features.observations.items():
        if name in expected.observations and tuple(expected.observations[name].shape) != tuple(feature.shape):
            problems.append(f"{name}: task gives {expected.observations[name].shape}, dataset has {feature.shape}")
    if problems:
        raise ValueError(f"the dataset does not match task {task_id!r}: " + "; ".join(problems))


class _Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


def run(config: TrainConfig) -> Path:
    """Train and return the policy folder."""
    device = choose_device(config.device)
    distributed = _Distributed(device)
    out = Path(config.out)
    store = DemoStore(config.dataset)
    meta = store.meta
    features = FeatureSpec.from_json(meta["features"])
    task_id = meta["task"]["id"] if meta.get("task") else None
    if task_id:
        check_dataset_fits_task(meta, features, task_id)

    torch.manual_seed(config.seed + distributed.rank)
    np.random.seed(config.seed + distributed.rank)
    random.seed(config.seed + distributed.rank)
    bc = copy.deepcopy(config.bc)
    if bc.static_positions is None:
        bc = replace(bc, static_positions=static_positions(store, features))
    policy = make_policy(config.policy, features, bc).to(device)
    # The data-dependent defaults, decided: config.json's training section shows what ran.
    config = replace(config, bc=policy.config, scenes=_scene_count(config, policy, task_id))
    train_episodes, validation_episodes = split_episodes(len(store), config.validation_fraction, config.seed)
    keys, history, chunk = policy.training_keys, policy.history, policy.chunk
    generator = torch.Generator().manual_seed(config.seed * 1000 + distributed.rank)
    stream = config.data == "stream" or (
        config.data == "auto" and estimated_bytes(store, keys) > available_memory(device) // 2
    )
    if stream:
        streaming = StreamingBatches(store, train_episodes, keys, history, chunk, config.seed * 1000 + distributed.rank)
        batches = streaming.loader(config.batch_size, config.data_workers, device)
        policy.fit_normalization(next(streaming.loader(4096, 0, device)))
        validation = None  # the validation loss needs the held-out episodes in memory
    else:
        data = EpisodeBatches(store, train_episodes, keys, history, chunk, device)
        batches = iter(lambda: data.sample(config.batch_size, generator), None)
        validation = (
            EpisodeBatches(store, validation_episodes, keys, history, chunk, device) if validation_episodes else None
        )
        policy.fit_normalization(data.sample(min(len(data), 4096), torch.Generator().manual_seed(config.seed)))

    scenes = _scenes(config, policy, store, device, distributed) if config.scenes else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config.warmup, config.steps)
    )
    ema = copy.deepcopy(policy).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    start_step, best_success = 0, -1.0
    if config.resume:
        start_step, best_success = _restore(out, policy, ema, optimizer, scheduler, generator)
    elif distributed.main and (out / "training_state.json").exists():
        raise ValueError(f"{out} already holds a trained policy; pass --resume to continue it or choose another --out")

    model = policy
    if distributed.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device] if device.type == "cuda" else None
        )
    extra = _folder_facts(config, store, train_episodes, validation_episodes, stream, distributed, device)
    if distributed.main:
        checkpoint.write_config(out, policy, extra)

    autocast = mixed_precision(device)
    log = _TrainingLog(out, config, start_step, distributed)
    ema_parameters, policy_parameters = list(ema.parameters()), list(policy.parameters())
    ema_buffers, policy_buffers = list(ema.buffers()), list(policy.buffers())
    last = min(config.until or config.steps, config.steps)
    with _StopOnCtrlC(active=distributed.world_size == 1) as ctrl_c:
        for step in range(start_step, last):
            policy.train()
            batch = next(batches)
            if scenes is not None:
                chosen = torch.randint(0, len(scenes["privileged"]), (config.scene_batch,), generator=generator)
                chosen = chosen.to(device)
                batch |= {f"scenes/{key}": value[chosen] for key, value in scenes.items()}
            metrics = _optimizer_step(model, policy, batch, optimizer, scheduler, autocast, config.grad_clip, step)
            with torch.no_grad():  # one fused kernel per list, not one per tensor (matters on a GPU)
                torch._foreach_lerp_(ema_parameters, policy_parameters, 1.0 - config.ema)
                if ema_buffers:
                    torch._foreach_copy_(ema_buffers, policy_buffers)
            log.stepped()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                validate = validation is not None and distributed.main
                log.scalars(
                    done,
                    metrics,
                    scheduler.get_last_lr()[0],
                    (lambda: _validation_loss(ema, validation, config.batch_size, autocast)) if validate else None,
                )
            evaluate_now = (
                task_id
                and config.eval_every >= 0
                and (done == config.steps or (config.eval_every > 0 and done % config.eval_every == 0))
            )
            if distributed.main and (done % config.save_every == 0 or done == last or evaluate_now or ctrl_c.requested):
                if evaluate_now:
                    success = _closed_loop(ema, extra, config.eval_episodes)
                    log.evaluation(done, success, config.eval_episodes)
                    if success > best_success:
                        best_success = success
                        checkpoint.save_weights(out / "best.safetensors", ema.state_dict())
                _save(out, policy, ema, optimizer, scheduler, generator, done, best_success)
            if ctrl_c.requested:
                log.message(
                    f"stopped by Ctrl-C after step {done}, saved; continue with "
                    f"`robolearn train {config.dataset} --out {out} --resume` (and the same settings)"
                )
                break
    log.close()
    if distributed.world_size > 1:
        torch.distributed.barrier()
    return out


def _folder_facts(
    config: TrainConfig,
    store: DemoStore,
    train_episodes: list[int],
    validation_episodes: list[int],
    stream: bool,
    distributed: _Distributed,
    device: torch.device,
) -> dict:
    """What config.json records besides the policy's own config: the task, env and dataset it was
    trained on (what evaluation rebuilds the env from), the training settings and the versions."""
    meta = store.meta
    return {
        "task": meta.get("task"),
        "env": meta["env"],
        "control_rate": meta.get("control_rate"),
        "max_steps": meta.get("max_steps"),
        "dataset": {
            "path": str(store.root),
            "episodes": len(store),
            "train": train_episodes,
            "validation": validation_episodes,
        },
        "train": jsonable(asdict(config)),
        "data_loading": "stream" if stream else "memory",
        "world_size": distributed.world_size,
        "device": str(device),
        "versions": library_versions() | {"torch": torch.__version__},
    }


class _TrainingLog:
    """Where training reports: log.jsonl, TensorBoard scalars and the progress bar. Only the main
    process writes; every process takes part in averaging the metrics over processes."""

    def __init__(self, out: Path, config: TrainConfig, start_step: int, distributed: _Distributed) -> None:
        self.config, self.distributed = config, distributed
        self.file = open(out / "log.jsonl", "a") if distributed.main else None
        self.board = SummaryWriter(str(out / "tensorboard")) if distributed.main else None
        self.progress = tqdm(
            total=config.steps,
            initial=start_step,
            desc=f"train {config.policy}",
            unit="step",
            disable=not distributed.main,
        )
        self.started = self.window_start = time.perf_counter()
        self.window_steps = 0

    def stepped(self) -> None:
        self.window_steps += 1
        self.progress.update()

    def scalars(self, step: int, metrics: dict, lr: float, validation_loss: Callable[[], float] | None = None) -> None:
        """One log record: the metrics averaged over processes, speed since the last record, and the
        validation loss when ``validation_loss`` (called after the speed is measured) is given."""
        elapsed = time.perf_counter() - self.window_start
        mean = self.distributed.mean
        record = {
            "step": step,
            "loss": mean(metrics["loss"]),
            "lr": lr,
            "steps_per_s": self.window_steps / elapsed,
            "samples_per_s": self.window_steps * self.config.batch_size * self.distributed.world_size / elapsed,
            "time": time.perf_counter() - self.started,
        }
        record |= {key: mean(value) for key, value in metrics.items() if key != "loss"}
        if validation_loss is not None:
            record["validation_loss"] = validation_loss()
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", val=f"{record.get('validation_loss', math.nan):.4f}")
        if self.file:
            self._write(record)
            for key, value in record.items():
                if key not in ("step", "time"):
                    self.board.add_scalar(f"train/{key}", value, step)
        self.window_start, self.window_steps = time.perf_counter(), 0

    def evaluation(self, step: int, success: float, episodes: int) -> None:
        if self.file:
            self._write({"step": step, "eval_success_rate": success})
            self.board.add_scalar("eval/success_rate", success, step)
        self.message(f"step {step}: closed-loop success {success:.0%} on {episodes} held-out episodes")

    def message(self, text: str) -> None:
        self.progress.write(text)

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.progress.close()
        if self.file:
            self.file.close()
            self.board.close()


DEFAULT_SCENES = 5_000
"""Random scenes rendered for a position estimator when --scenes is not given (benchmarks/bc.py's recipe)."""


def static_positions(store: DemoStore, features: FeatureSpec) -> tuple[str, ...]:
    """Names of the object positions in the privileged state that no recorded episode moves (a goal
    marker, a fixed target): ``bc`` holds their estimate from an episode's first frames."""
    privileged = features.observations.get("privileged")
    if privileged is None or not len(store):
        return ()
    names = privileged.names("position")
    moving = set()
    for path in store.episode_paths():
        values = read_arrays(path, ["obs/privileged"])["obs/privileged"]  # this one array of the episode
        moving |= {name for name in names if np.ptp(values[:, privileged.slice(name)], axis=0).max() > STILL}
    return tuple(name for name in names if name not in moving)


STILL = 1e-6
"""Metres an object position may vary within an episode and still count as static."""


def _estimates_positions(policy) -> bool:
    """Whether ``policy`` has a per-frame position estimator that random scenes can train."""
    return getattr(policy, "per_frame_positions", False) and policy.config.aux_weight > 0


def _scene_count(config: TrainConfig, policy, task_id: str | None) -> int:
    if config.scenes is not None:
        return config.scenes
    return DEFAULT_SCENES if _estimates_positions(policy) and task_id else 0


def _scenes(
    config: TrainConfig, policy, store: DemoStore, device: torch.device, distributed
) -> dict[str, torch.Tensor]:
    """The random scenes for ``--scenes``, on the device, shaped like a batch with a history of one."""
    from robolearn.data.scenes import cached_scenes

    if not _estimates_positions(policy):
        raise ValueError(
            "--scenes trains the per-frame position estimator; it needs --bc.trunk-input relative (or positions) "
            "and --bc.aux-weight > 0"
        )
    if not store.meta.get("task"):
        raise ValueError(f"--scenes renders new scenes of the dataset's task; {store.root} names no task")
    if distributed.world_size > 1 and not distributed.main:
        torch.distributed.barrier()  # rank 0 renders and caches them first
    scenes = cached_scenes(store.root, store.meta["task"], store.meta["env"], config.scenes, source=config.scene_source)
    if distributed.world_size > 1 and distributed.main:
        torch.distributed.barrier()
    return {key: scenes[key].unsqueeze(1).to(device) for key in policy.training_keys}


def _optimizer_step(model, policy, batch, optimizer, scheduler, autocast, grad_clip: float, step: int) -> dict:
    """Forward, backward, clipping and the optimizer and schedule steps; the loss's metrics.

    A non-finite loss or gradient raises before the optimizer touches the weights, so no
    checkpoint written afterwards can hold it.
    """
    with autocast:
        loss, metrics = model(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the training loss became {loss.item()} at step {step} ({metrics}); no checkpoint was written "
            "for this step. Lower --lr or check the dataset with `robolearn verify`"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        if not torch.isfinite(norm):
            bad = [
                name for name, p in policy.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            raise FloatingPointError(f"non-finite gradient at step {step} in {bad[:3]}; no checkpoint was written")
    optimizer.step()
    scheduler.step()
    return metrics


class _StopOnCtrlC:
    """The first Ctrl-C asks training to stop after the step in progress, saved and resumable; a
    second one aborts at once. Only for a single process: under torchrun every rank would have to
    agree on the step, so there Ctrl-C keeps its usual meaning (the last saved step survives)."""

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.previous = None

    def __enter__(self) -> _StopOnCtrlC:
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving it (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _validation_loss(policy, validation: EpisodeBatches, batch_size: int, autocast) -> float:
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        for batch in validation.iterate(batch_size * 4):
            loss, _ = policy.loss(batch)
            total += loss.item() * len(batch["actions"])
            count += len(batch["actions"])
    return total / max(count, 1)


def _closed_loop(policy, extra: dict, episodes: int) -> float:
    """Success rate of ``policy`` on ``episodes`` held-out model-selection seeds (in this process)."""
    from robolearn.envs import make
    from robolearn.rollout import selection_episodes

    env = make(extra["task"]["id"], task_kwargs=extra["task"].get("kwargs") or None, **extra["env"])
    try:
        return float(np.mean([episode.success for episode in selection_episodes(env, policy, episodes)]))
    finally:
        env.close()


def _save(out, policy, ema, optimizer, scheduler, generator, step: int, best_success: float) -> None:
    checkpoint.save_weights(out / "model.safetensors", policy.state_dict())
    checkpoint.save_weights(out / "ema.safetensors", ema.state_dict())
    tensors, optimizer_meta = checkpoint.optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampler"] = generator.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    checkpoint.save_weights(out / "training_state.safetensors", tensors)
    state = {
        "step": step,
        "best_success": best_success,
        "scheduler": scheduler.state_dict(),
        "optimizer": optimizer_meta,
        "rng_numpy": _numpy_state(),
    }
    atomic_write_json(out / "training_state.json", jsonable(state))


def _restore(out: Path, policy, ema, optimizer, scheduler, generator) -> tuple[int, float]:
    state_path = out / "training_state.json"
    if not state_path.is_file():
        raise ValueError(f"--resume: {out} holds no training state (training_state.json); train without --resume")
    state = json.loads(state_path.read_text())
    policy.load_state_dict(checkpoint.load_weights(out / "model.safetensors"))
    ema.load_state_dict(checkpoint.load_weights(out / "ema.safetensors"))
    tensors = checkpoint.load_weights(out / "training_state.safetensors")
    checkpoint.restore_optimizer(optimizer, tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.sampler"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, keys, position, has_gauss, cached = state["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    return int(state["step"]), float(state["best_success"])


def _numpy_state() -> list:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]
