"""Scripted-operator quality: success rate of every task's operator over 100 seeds.

The operators are what headless recording, tests and benchmarks use when nobody is
at the keyboard, so each must succeed on at least 95% of seeds. Writes
``benchmarks/results/operators.{md,json}`` and prints one final JSON line
(``{"<task>": success_rate, ...}`` plus details).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import machine, machine_line, write_results
from robolearn.envs import make, task_names
from robolearn.envs.operator import ScriptedPolicy
from robolearn.rollout import rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=None, help="default: every registered task")
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()

    rows, summary = [], {"benchmark": "operators", "seeds": args.seeds, "tasks": {}}
    for task in args.tasks or task_names():
        env = make(task, cameras=())
        policy = ScriptedPolicy(env)
        start = time.perf_counter()
        episodes = [rollout(env, policy, seed, stop_on_success=True) for seed in range(args.seeds)]
        seconds = time.perf_counter() - start
        successes = [e for e in episodes if e.success]
        result = {
            "success_rate": len(successes) / len(episodes),
            "failed_seeds": [e.seed for e in episodes if not e.success],
            "physics_warnings": sum(bool(e.physics_warning) for e in episodes),
            "mean_steps_to_success": round(statistics.mean(e.first_success_step for e in successes), 1)
            if successes
            else None,
            "max_steps": env.max_steps,
            "env_steps_per_s": round(sum(e.steps for e in episodes) / seconds, 1),
        }
        summary["tasks"][task] = result
        summary[task] = result["success_rate"]
        rows.append(
            f"| {task} | {len(successes)}/{len(episodes)} | {result['mean_steps_to_success']} | {env.max_steps} "
            f"| {result['physics_warnings']} | {result['failed_seeds'] or ''} |"
        )
        print(rows[-1])
        env.close()
    summary["machine"] = machine()
    table = "\n".join(
        [
            "# Scripted operators",
            "",
            f"`python -m benchmarks.operators --seeds {args.seeds}`: seeds 0..{args.seeds - 1}, each episode's "
            "operator style drawn from its seed; success = the task's `is_success` at any step.",
            "",
            "| task | success | mean steps to success | max steps | physics warnings | failed seeds |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Target: at least 95% per task. " + machine_line(summary["machine"], mujoco=True),
            "",
        ]
    )
    write_results("operators", summary, table)


if __name__ == "__main__":
    main()
