"""How far a bc policy's object-position estimate is from the truth, on held-out scenes.

For a policy trained with ``--bc.trunk-input relative`` (or ``positions``): the task's scripted
operator drives held-out episodes (so every policy is measured on the same frames), and at each step
the policy's estimate from that frame is compared with the simulator's object positions. Reports
the mean absolute error per object and axis in millimetres, split by how far the first object is
from the second (for push: cube from goal), and how much of it is a constant offset for the whole
episode rather than frame-to-frame noise; writes ``benchmarks/results/<--name>.{md,json}`` (default
``position_error``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import machine, machine_line, write_results
from robolearn.checkpoint import load_policy, read_config
from robolearn.envs import make
from robolearn.envs.env import evaluation_seeds
from robolearn.envs.operator import ScriptedPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="policy folder (trained with --bc.trunk-input relative or positions)")
    parser.add_argument("--weights", default="best")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--note", default="", help="how the policy was trained (goes into the table)")
    parser.add_argument("--name", default="position_error", help="results file name (benchmarks/results/<name>.*)")
    args = parser.parse_args()

    policy = load_policy(args.policy, args.weights).eval()
    config = read_config(args.policy)
    env = make(config["task"]["id"], task_kwargs=config["task"].get("kwargs") or None, **config["env"])
    operator = ScriptedPolicy(env)
    names = env.features.observations["privileged"].names("position")
    errors, apart, offsets, spreads = [], [], [], []
    for seed in evaluation_seeds(args.episodes):
        signed = []
        observation, _ = env.reset(seed=seed)
        operator.reset()
        for _ in range(env.max_steps):
            frame = {key: torch.as_tensor(observation[key])[None, None] for key in policy.observation_keys}
            estimate = policy.estimated_positions(frame)[0, 0].numpy()
            truth = observation["privileged"][policy.object_positions]
            signed.append((estimate - truth).reshape(-1, 3) * 1000)
            errors.append(np.abs(signed[-1]))
            apart.append(np.linalg.norm(truth[:2] - truth[3:5]) if len(truth) >= 6 else 0.0)
            observation, _, terminated, truncated, info = env.step(operator.act(observation))
            if terminated or truncated or info["is_success"]:
                break
        offsets.append(np.mean(signed, axis=0))  # the episode's constant part of the error
        spreads.append(np.std(signed, axis=0))  # and how much it varies from frame to frame
    env.close()
    errors, apart = np.array(errors), np.array(apart)
    groups = {"all frames": np.ones(len(apart), bool)}
    if len(names) >= 2:
        groups |= {f"{names[0]} over 8 cm from {names[1]}": apart > 0.08, "within 8 cm": apart <= 0.08}
    results, rows = {}, []
    for group, chosen in groups.items():
        mean = errors[chosen].mean(0)
        results[group] = {
            "frames": int(chosen.sum()),
            **{name: mean[i].round(1).tolist() for i, name in enumerate(names)},
        }
        cells = " | ".join(f"{mean[i, 0]:.1f}, {mean[i, 1]:.1f}, {mean[i, 2]:.1f}" for i in range(len(names)))
        rows.append(f"| {group} | {int(chosen.sum())} | {cells} |")
    offsets, spreads = np.abs(np.array(offsets)), np.array(spreads)
    per_episode = {
        name: {
            "offset_mm": offsets[:, i].mean(0).round(1).tolist(),
            "largest_offset_mm": offsets[:, i].max(0).round(1).tolist(),
            "spread_mm": spreads[:, i].mean(0).round(1).tolist(),
        }
        for i, name in enumerate(names)
    }
    episode_rows = [
        f"| {name} | {_xy(d['offset_mm'])} | {_xy(d['largest_offset_mm'])} | {_xy(d['spread_mm'])} |"
        for name, d in per_episode.items()
    ]
    summary = {
        "benchmark": "position_error",
        "settings": vars(args),
        "task": config["task"]["id"],
        "results": results,
        "per_episode": per_episode,
    }
    summary["machine"] = machine()
    table = "\n".join(
        [
            "# Object-position estimate of a bc policy, on held-out scenes",
            "",
            f"`python -m benchmarks.position_error {args.policy} --weights {args.weights} --episodes {args.episodes}"
            + (f" --name {args.name}" if args.name != "position_error" else "")
            + "`: "
            f"task `{config['task']['id']}`, the scripted operator driving {args.episodes} held-out episodes until "
            f"success; mean absolute error (mm) of the policy's estimate from each frame. {args.note}",
            "",
            f"| frames | count | {' | '.join(f'{name} x, y, z (mm)' for name in names)} |",
            "|---|---|" + "---|" * len(names),
            *rows,
            "",
            "Per episode: the error's constant part (the mean signed error over the episode's frames; its size "
            "averaged over episodes, and the largest) against its frame-to-frame spread (standard deviation "
            "within the episode, averaged). A constant part that dominates is a bias for the whole episode, which "
            "averaging frames cannot remove.",
            "",
            "| object | offset per episode x, y (mm) | largest offset x, y (mm) | spread within an episode x, y (mm) |",
            "|---|---|---|---|",
            *episode_rows,
            "",
            machine_line(summary["machine"]),
            "",
        ]
    )
    write_results(args.name, summary, table)


def _xy(values) -> str:
    return f"{values[0]:.1f}, {values[1]:.1f}"


if __name__ == "__main__":
    main()
