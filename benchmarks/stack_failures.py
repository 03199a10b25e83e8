"""Stack failure modes: how each policy's failed held-out episodes end.

Success rates say how often a stack policy fails, not how; this says where to look
next. Every failed episode (run to its last step; successes stop at the first
success) is put in one class by where the red cube is at the end and where it has
been:

- ``never lifted``: the red cube never rose 1.5 cm off the table;
- ``held in the air``: both fingers still touch it and it is more than 1 cm above the
  height of a stacked cube (the policy stopped before lowering it, or never got there);
- ``on the table``: it was lifted but ends on the table (dropped, set down beside the
  green cube, or knocked off it);
- ``on top, not let go``: it rests on top within the task's tolerances but the hand
  still touches it or it moves;
- ``other``: anything else.

Writes ``benchmarks/results/stack_failures.{md,json}`` and ends with one JSON line
(per policy: success rate and the count of each class).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from benchmarks.common import machine, machine_line, write_results
from robolearn import checkpoint
from robolearn.envs import evaluation_seeds
from robolearn.envs.tasks.stack import CUBE_HALF_SIZE, HEIGHT_TOLERANCE
from robolearn.evaluate import env_for_policy
from robolearn.rollout import rollout

CLASSES = ("never lifted", "held in the air", "on the table", "on top, not let go", "other")
LIFTED = CUBE_HALF_SIZE + 0.015
"""Height (m) of the red cube's centre above which it counts as lifted."""


class Watched:
    """A policy that also notes, before each action, how high the red cube is."""

    def __init__(self, policy, env) -> None:
        self.policy, self.env = policy, env
        self.highest = 0.0

    def reset(self) -> None:
        self.policy.reset()
        self.highest = 0.0

    def act(self, observation):
        self.highest = max(self.highest, float(self.env.physics.body_position("cube_a/")[2]))
        return self.policy.act(observation)


def classify(env, highest: float) -> str:
    """The class of a failed episode from the scene at its end and the red cube's greatest height."""
    physics, task = env.physics, env.task
    red = physics.body_position("cube_a/")
    highest = max(highest, float(red[2]))
    if highest < LIFTED:
        return "never lifted"
    touching = task.touching(physics)
    above = red[2] - physics.body_position("cube_b/")[2] - 2 * CUBE_HALF_SIZE  # over a stacked cube's height
    if all(touching) and above > HEIGHT_TOLERANCE:
        return "held in the air"
    if red[2] < LIFTED:
        return "on the table"
    if task.on_top(physics):
        return "on top, not let go"
    return "other"


def load(folder: str, true_positions: bool):
    """A stack policy's config and best weights; with ``true_positions`` its BC policy (its own, or a fine-tuned
    agent's base) is given the true object positions in place of its estimates."""
    config = checkpoint.read_config(folder)
    task = (config.get("task") or {}).get("id")
    if task != "stack":
        raise SystemExit(f"{folder} is a policy for {task!r}; expected a 'stack' policy")
    policy = checkpoint.load_policy(folder, "best")
    policy.eval()
    base = getattr(policy, "base", policy)
    if true_positions:
        if not getattr(base, "per_frame_positions", False):
            raise SystemExit(
                f"--true-positions {folder}: this policy estimates no per-frame object positions to replace "
                "(expected a bc policy trained with --bc.trunk-input relative or positions, or an agent over one); "
                "leave it out of --true-positions"
            )
        base.true_positions = True
    return config, policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", help="stack policy folders (bc or fine-tuned)")
    parser.add_argument("--episodes", type=int, default=60, help="held-out episodes per policy")
    parser.add_argument(
        "--true-positions", nargs="*", default=[], help="of the policies, those to also run on true object positions"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)

    runs = [(folder, False) for folder in args.policies] + [(folder, True) for folder in args.true_positions]
    policies = {(folder, true): load(folder, true) for folder, true in runs}  # every folder checked before any episode
    summary: dict = {"benchmark": "stack_failures", "episodes": args.episodes, "policies": {}}
    rows = []
    for folder, true in runs:
        config, policy = policies[folder, true]
        env = env_for_policy(config)
        watched = Watched(policy, env)
        counts: collections.Counter = collections.Counter()
        failed: dict[str, list[int]] = collections.defaultdict(list)
        for seed in evaluation_seeds(args.episodes):
            episode = rollout(env, watched, seed, stop_on_success=True)
            if episode.success:
                counts["success"] += 1
                continue
            kind = classify(env, watched.highest)
            counts[kind] += 1
            failed[kind].append(seed)
        env.close()
        name = Path(folder).name + (" (true positions)" if true else "")
        result = {
            "policy": config["policy"],
            "success_rate": counts["success"] / args.episodes,
            "failures": {kind: counts[kind] for kind in CLASSES},
            "failed_seeds": dict(failed),
        }
        summary["policies"][name] = result
        rows.append(
            f"| {name} | {config['policy']} | {counts['success']}/{args.episodes} | "
            + " | ".join(str(counts[kind]) for kind in CLASSES)
            + " |"
        )
        print(rows[-1], flush=True)
    summary["machine"] = machine()
    true_flag = f" --true-positions {' '.join(args.true_positions)}" if args.true_positions else ""
    table = "\n".join(
        [
            "# Stack: how failed episodes end",
            "",
            f"`python -m benchmarks.stack_failures {' '.join(args.policies)} --episodes {args.episodes}{true_flag}`: "
            f"each policy's best weights on the first {args.episodes} held-out evaluation seeds; every failed "
            "episode classed by where the red cube ends (see the script's docstring).",
            "",
            "| policy | family | success | " + " | ".join(CLASSES) + " |",
            "|---|---|---|" + "---|" * len(CLASSES),
            *rows,
            "",
            machine_line(summary["machine"], mujoco=True),
            "",
        ]
    )
    write_results("stack_failures", summary, table)


if __name__ == "__main__":
    main()
