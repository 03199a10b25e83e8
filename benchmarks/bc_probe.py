"""What limits behaviour cloning on a task: the bc recipe on chosen simulator quantities instead of pixels.

Records scripted demonstrations without frames, then for each input set trains an MLP with the
recipe of ``bc`` (two observations of history, chunks of ``--chunk`` actions (default: bc's),
temporal ensemble when acting)
and evaluates it on held-out episodes. Input sets, from the leanest:

- ``positions``: the gripper's position and every object position in the privileged state;
- ``+ orientations``: also the hand's and the objects' orientations;
- ``+ arm``: positions plus the whole proprioceptive state (joint angles, opening, orientation);
- ``everything``: the proprioceptive and the privileged state;
- ``positions + episode code``: positions plus a random 2-D vector drawn once per episode, which
  says nothing about the scene: a direct test of whether the learner memorises demonstrations
  by whatever tells them apart;
- ``relative positions``: what ``bc --trunk-input relative`` shows its trunk, from the true
  positions: each object minus the gripper, the objects minus each other, the gripper's height.

If clean positions give high success and each extra input lowers it, the demonstrations can be
imitated and a pixel policy's shortfall comes from what else it sees, not from its eyes alone.
Writes ``benchmarks/results/bc_probe_<task>.{md,json}`` (or ``<--name>``) and prints one final JSON line.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import machine, machine_line, write_results
from robolearn.data.store import DemoStore
from robolearn.envs import make
from robolearn.envs.env import evaluation_seeds
from robolearn.envs.spec import FeatureSpec
from robolearn.policies.bc import BCConfig, relations, temporal_ensemble
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.rollout import rollout

HISTORY, ENSEMBLE_DECAY = 2, BCConfig.ensemble_decay
INPUT_SETS = {
    "positions": (("gripper_position",), ("position",), None),
    "+ orientations": (("gripper_position", "gripper_quaternion"), ("position", "quaternion"), None),
    "+ arm": (None, ("position",), None),
    "everything": (None, ("",), None),
    "positions + episode code": (("gripper_position",), ("position",), "code"),
    "relative positions": (("gripper_position",), ("position",), "relative"),
}
"""name: (state entries or None for all, privileged entry suffixes, and "code" to add a per-episode random
code or "relative" to turn the positions into bc's relative trunk input)."""


def input_indices(features: FeatureSpec, state_entries, privileged_suffixes) -> tuple[list[int], list[int]]:
    state = features.observations["state"]
    state_indices = list(range(state.shape[0])) if state_entries is None else state.entry_indices(state_entries)
    privileged = features.observations["privileged"]
    privileged_indices = sorted({i for suffix in privileged_suffixes for i in privileged.indices(suffix)})
    return state_indices, privileged_indices


def inputs(
    state: np.ndarray, privileged: np.ndarray, indices, code: np.ndarray | None = None, relative: bool = False
) -> np.ndarray:
    parts = [state[..., indices[0]], privileged[..., indices[1]]]
    if relative:  # the first three state entries are the gripper's position
        gripper, objects = (torch.as_tensor(part, dtype=torch.float32) for part in parts)
        return relations(objects, gripper[..., :3]).numpy()
    if code is not None:
        parts.append(np.broadcast_to(code, (*state.shape[:-1], code.shape[-1])))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def training_set(store: DemoStore, indices, mode: str | None, rng: np.random.Generator, chunk: int):
    x, y, mask = [], [], []
    for episode in store.episodes():
        arrays = episode.arrays()
        code = rng.uniform(-1, 1, 2) if mode == "code" else None
        observed = inputs(arrays["obs/state"], arrays["obs/privileged"], indices, code, mode == "relative")
        previous = np.concatenate([observed[:1], observed[:-1]])
        actions, steps = arrays["actions"], len(arrays["actions"])
        for t in range(steps):
            future = np.arange(t, t + chunk)
            x.append(np.concatenate([previous[t], observed[t]]))
            y.append(actions[np.minimum(future, steps - 1)])
            mask.append(future < steps)
    return (torch.as_tensor(np.array(v), dtype=torch.float32) for v in (x, y, mask))


def train(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, steps: int, seed: int):
    """An MLP from inputs ``x`` (N, I) to action chunks ``y`` (N, chunk, A); returns inputs -> (chunk, A)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-3
    chunk, action_size = y.shape[1:]
    layers, size = [], x.shape[1]
    for _ in range(3):
        layers += [nn.Linear(size, 256), nn.ReLU()]
        size = 256
    net = nn.Sequential(*layers, nn.Linear(size, chunk * action_size))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (256,), generator=generator)
        predicted = net((x[batch] - mean) / std).view(-1, chunk, action_size)
        loss = (((predicted - y[batch]) ** 2).mean(-1) * mask[batch]).sum() / mask[batch].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return lambda inputs: net((torch.as_tensor(inputs) - mean) / std).view(chunk, action_size).numpy()


class ProbePolicy:
    """The trained MLP behind the policy interface, acting like ``bc``: two observations of history and
    the temporal ensemble of its chunks. With ``rng`` each episode gets its own random code."""

    def __init__(self, net, indices, rng: np.random.Generator | None, chunk: int, relative: bool = False) -> None:
        self.net, self.indices, self.rng, self.chunk, self.relative = net, indices, rng, chunk, relative

    def reset(self) -> None:
        self.code = self.rng.uniform(-1, 1, 2) if self.rng is not None else None
        self.previous, self.chunks = None, deque(maxlen=self.chunk)

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        current = inputs(observation["state"], observation["privileged"], self.indices, self.code, self.relative)
        previous = current if self.previous is None else self.previous
        self.previous = current
        self.chunks.appendleft(np.clip(self.net(np.concatenate([previous, current])), -1.0, 1.0))
        return temporal_ensemble(self.chunks, ENSEMBLE_DECAY)


def success_rate(task: str, policy: ProbePolicy, episodes: int) -> float:
    env = make(task, cameras=())
    successes = sum(rollout(env, policy, seed).success for seed in evaluation_seeds(episodes))
    env.close()
    return successes / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="push")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per input set")
    parser.add_argument("--sets", nargs="+", default=list(INPUT_SETS), choices=list(INPUT_SETS), help="input sets")
    parser.add_argument(
        "--chunk", type=int, default=BCConfig.chunk, help="future actions predicted per step (bc --chunk)"
    )
    parser.add_argument("--name", default=None, help="results file name (default bc_probe_<task>)")
    args = parser.parse_args()
    if args.chunk < 1:
        parser.error(f"--chunk must be at least 1, found {args.chunk}")

    root = Path(tempfile.mkdtemp(prefix="robolearn-probe-"))
    rows, results = [], {}
    try:
        record(RecordConfig(task=args.task, out=root / "demos", episodes=args.demos, no_images=True))
        store = DemoStore(root / "demos")
        features = FeatureSpec.from_json(store.meta["features"])
        for name in args.sets:
            state_entries, suffixes, mode = INPUT_SETS[name]
            indices = input_indices(features, state_entries, suffixes)
            rates, start = [], time.perf_counter()
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                x, y, mask = training_set(store, indices, mode, rng, args.chunk)
                size = x.shape[1] // HISTORY  # inputs per frame
                net = train(x, y, mask, args.steps, seed)
                policy = ProbePolicy(
                    net, indices, rng if mode == "code" else None, args.chunk, relative=mode == "relative"
                )
                rates.append(success_rate(args.task, policy, args.episodes))
            results[name] = {"success": rates, "inputs": size, "seconds": round(time.perf_counter() - start, 1)}
            rows.append(f"| {name} | {size} | {statistics.mean(rates):.0%} | {', '.join(f'{r:.0%}' for r in rates)} |")
            print(rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {
        "benchmark": "bc_probe",
        "settings": vars(args),
        "results": results,
        **{name: round(statistics.mean(r["success"]), 3) for name, r in results.items()},
        "machine": machine(),
    }
    subset = "" if args.sets == list(INPUT_SETS) else " --sets " + " ".join(f'"{name}"' for name in args.sets)
    table = "\n".join(
        [
            f"# What limits behaviour cloning on `{args.task}`: bc on simulator quantities instead of pixels",
            "",
            f"`python -m benchmarks.bc_probe --task {args.task} --demos {args.demos} --steps {args.steps} "
            f"--episodes {args.episodes} --seeds {args.seeds} --chunk {args.chunk}{subset}"
            f"{f' --name {args.name}' if args.name else ''}`: {args.demos} scripted demonstrations; "
            f"an MLP (3x256) with bc's recipe (history 2, chunks of {args.chunk}, temporal ensemble) on each input set, "
            f"{args.steps} steps of batch 256; success on {args.episodes} held-out episodes per training seed. "
            "The episode code is a random 2-D vector drawn once per episode: it tells demonstrations apart "
            "and says nothing about the scene.",
            "",
            "| inputs | size per frame | success (mean) | per training seed |",
            "|---|---|---|---|",
            *rows,
            "",
            machine_line(summary["machine"]),
            "",
        ]
    )
    write_results(args.name or f"bc_probe_{args.task}", summary, table)


if __name__ == "__main__":
    main()
