"""Behaviour-cloning quality and training speed: record scripted demos, train ``bc``, evaluate held-out seeds.

For each task and seed: record ``--demos`` scripted demonstrations (pixels + proprioception),
train ``bc`` for ``--steps`` steps (training seed = seed), evaluate ``--episodes`` held-out
episodes. Also measures the data-pipeline overhead: time per full training step divided by
the time of forward, backward and optimizer step on one preloaded batch.

The defaults are the recipe README.md describes: the trunk sees where the estimated objects are
from the gripper and from each other (``--trunk-input relative``) plus the gripper's opening, and
the position estimator also learns from 5,000 random labelled scenes. ``--trunk-input features
--scenes 0 --state-features`` (no names) is the earlier recipe: encoder features and the whole state.
The trunk learns from the recorded positions and positions no episode moves are held from an episode's
first 5 frames; ``--trunk-positions estimated --static-frames 0`` is how it was before.
``--position-frame gripper`` has the estimator measure each object's x and y from the gripper.
``--true-positions`` also evaluates every policy on the simulator's object positions.

``--task-settings push:chunk=4`` changes one setting for one task only (robomimic keeps a config per
dataset the same way); ``--merge`` re-runs some tasks and keeps the other tasks' rows of an earlier
run of the same table, each row naming the command and commit it came from.

Writes ``benchmarks/results/bc.{md,json}`` and prints one final JSON line with the mean
success per task and ``data_overhead``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, machine_line, write_results
from robolearn.data.loader import EpisodeBatches
from robolearn.data.scenes import SOURCES as SCENE_SOURCES
from robolearn.data.store import DemoStore
from robolearn.evaluate import EvalConfig
from robolearn.evaluate import run as evaluate
from robolearn.policies.base import make_policy, mixed_precision
from robolearn.policies.bc import BCConfig
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.train import TrainConfig
from robolearn.train import run as train


def data_overhead(dataset: Path, config: BCConfig, batch_size: int, steps: int = 30, device: str = "cpu") -> dict:
    """Per-step time of sampling + training against training on one fixed preloaded batch."""
    from robolearn.envs.spec import FeatureSpec

    store = DemoStore(dataset)
    features = FeatureSpec.from_json(store.meta["features"])
    policy = make_policy("bc", features, config).to(device)
    data = EpisodeBatches(
        store, list(range(len(store))), policy.training_keys, policy.history, policy.chunk, torch.device(device)
    )
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    fixed = data.sample(batch_size, generator)
    cuda = torch.device(device).type == "cuda"
    autocast = mixed_precision(torch.device(device))

    def step(batch) -> None:
        with autocast:
            loss, _ = policy.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if cuda:  # the host clock only means something once the device has finished
            torch.cuda.synchronize()

    for _ in range(5):
        step(fixed)
    timings = {"fixed": [], "sampled": []}
    for _ in range(steps):  # interleaved, so machine load hits both alike
        start = time.perf_counter()
        step(fixed)
        timings["fixed"].append(time.perf_counter() - start)
        start = time.perf_counter()
        step(data.sample(batch_size, generator))
        timings["sampled"].append(time.perf_counter() - start)
    fixed_s, sampled_s = statistics.median(timings["fixed"]), statistics.median(timings["sampled"])
    return {"ratio": sampled_s / fixed_s, "step_ms_sampled": sampled_s * 1e3, "step_ms_fixed": fixed_s * 1e3}


def arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, argparse.Namespace]]:
    """The command line, and each task's settings (``--task-settings`` applied)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["lift", "push", "stack"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="training seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument(
        "--perturb", type=float, default=0.0, help="chance per step of a scripted perturbation (record --perturb)"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--select-every", type=int, default=1000, help="closed-loop model selection interval")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--cameras", nargs="+", default=list(RecordConfig.cameras), help="cameras recorded and seen (record --cameras)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--history", type=int, default=BCConfig.history, help="observations the policy sees (bc --history)"
    )
    parser.add_argument(
        "--chunk", type=int, default=BCConfig.chunk, help="future actions predicted per step (bc --chunk)"
    )
    parser.add_argument(
        "--aux-weight", type=float, default=1.0, help="bc auxiliary object-position loss weight (bc --aux-weight)"
    )
    parser.add_argument(
        "--state-features",
        nargs="*",
        default=["gripper_opening"],
        help="proprioceptive entries the policy's trunk sees (bc --state-features; none given: all)",
    )
    parser.add_argument(
        "--trunk-input", choices=["features", "positions", "relative"], default="relative", help="bc --trunk-input"
    )
    parser.add_argument(
        "--strides", type=int, nargs=3, default=[2, 2, 1], help="the small encoder's convolution strides (bc --strides)"
    )
    parser.add_argument(
        "--keypoints",
        type=int,
        default=BCConfig.keypoints,
        help="spatial-softmax keypoints per camera (bc --keypoints)",
    )
    parser.add_argument(
        "--scale-floor",
        type=float,
        default=BCConfig.scale_floor,
        help="smallest std the trunk's inputs and the position targets are normalised by (bc --scale-floor)",
    )
    parser.add_argument("--scenes", type=int, default=5000, help="labelled scenes for the position loss (--scenes)")
    parser.add_argument(
        "--scene-source",
        choices=SCENE_SOURCES,
        default=TrainConfig.scene_source,
        help="where the scenes come from (train --scene-source)",
    )
    parser.add_argument(
        "--trunk-positions",
        choices=["recorded", "estimated"],
        default=BCConfig.trunk_positions,
        help="positions the trunk learns from (bc --trunk-positions)",
    )
    parser.add_argument(
        "--position-frame",
        choices=["world", "gripper"],
        default=BCConfig.position_frame,
        help="what the position estimator measures the objects from (bc --position-frame)",
    )
    parser.add_argument(
        "--static-frames",
        type=int,
        default=BCConfig.static_frames,
        help="frames whose estimates of a static position are held (bc --static-frames; 0: none)",
    )
    parser.add_argument("--shift", type=int, default=BCConfig.shift, help="random-shift pixels (bc --shift)")
    parser.add_argument(
        "--unshift",
        action=argparse.BooleanOptionalAction,
        default=BCConfig.unshift,
        help="take the random shift back out of the keypoints (bc --unshift)",
    )
    parser.add_argument(
        "--task-settings",
        nargs="*",
        default=[],
        metavar="TASK:FLAG=VALUE",
        help=f"a setting for one task only, e.g. push:chunk=4 (FLAG: {', '.join(PER_TASK)})",
    )
    parser.add_argument(
        "--true-positions",
        action="store_true",
        help="also evaluate each policy on the simulator's object positions instead of its estimates "
        "(robolearn eval --positions true): the gap is what perception costs",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the rows of results/<name>.json for the tasks not run now"
    )
    parser.add_argument("--name", default="bc", help="results file name (benchmarks/results/<name>.md, .json)")
    args = parser.parse_args(argv)
    return args, {task: task_settings(args, task) for task in args.tasks}


def main() -> None:
    args, per_task = arguments()
    configs = {task: bc_config(settings) for task, settings in per_task.items()}

    root = Path(tempfile.mkdtemp(prefix="robolearn-bc-"))
    runs, overhead = [], None
    try:
        for task in args.tasks:
            settings, bc = per_task[task], configs[task]
            dataset = root / "demos" / task
            record(
                RecordConfig(
                    task=task,
                    out=dataset,
                    episodes=args.demos,
                    image_size=args.image_size,
                    cameras=tuple(args.cameras),
                    perturb=args.perturb,
                )
            )
            if overhead is None:
                overhead = data_overhead(dataset, bc, args.batch_size) | {"task": task}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                out = root / "policies" / f"{task}-{seed}"
                start = time.perf_counter()
                train(
                    TrainConfig(
                        dataset=dataset,
                        out=out,
                        steps=settings.steps,
                        batch_size=args.batch_size,
                        seed=seed,
                        eval_every=args.select_every,
                        eval_episodes=20,
                        scenes=settings.scenes,
                        scene_source=args.scene_source,
                        bc=bc,
                    )
                )
                seconds = time.perf_counter() - start
                metrics = evaluate(EvalConfig(out, episodes=args.episodes, workers=args.workers, weights="best"))
                runs.append(
                    {
                        "task": task,
                        "seed": seed,
                        "success_rate": metrics["success_rate"],
                        "success_ci95": metrics["success_ci95"],
                        "train_seconds": round(seconds, 1),
                        "samples_per_s": round(settings.steps * args.batch_size / seconds, 1),
                    }
                )
                if args.true_positions:
                    oracle = EvalConfig(out, episodes=args.episodes, workers=args.workers, positions="true")
                    runs[-1]["true_positions_success"] = evaluate(oracle)["success_rate"]
                print(runs[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    facts = machine()
    command = command_line(args)
    tasks = earlier_tasks(args) if args.merge else {}
    for task in args.tasks:
        tasks[task] = {
            "runs": [r for r in runs if r["task"] == task],
            "settings": vars(per_task[task]),
            "bc_config": dataclasses.asdict(configs[task]),
            "command": command,
            "machine": facts,
        }
    summary = {"benchmark": "bc", "tasks": {task: tasks[task] for task in sorted(tasks)}}
    for task in sorted(tasks):
        summary[task] = round(statistics.mean(r["success_rate"] for r in tasks[task]["runs"]), 3)
    oracle = {
        task: round(statistics.mean(r["true_positions_success"] for r in tasks[task]["runs"]), 3)
        for task in sorted(tasks)
        if all("true_positions_success" in r for r in tasks[task]["runs"])
    }
    if oracle:
        summary["true_positions"] = oracle
    summary["data_overhead"] = round(overhead["ratio"], 3) if overhead else None
    summary["data_overhead_detail"] = overhead
    summary["machine"] = facts
    write_results(args.name, summary, results_table(summary))


def task_settings(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """The settings ``task`` runs with: the command line's, with that task's ``--task-settings`` applied."""
    settings = argparse.Namespace(**vars(args))
    for entry in args.task_settings:
        name, _, assignment = entry.partition(":")
        flag, _, value = assignment.partition("=")
        flag = flag.replace("-", "_")
        if not (name and flag and value) or flag not in PER_TASK:
            raise SystemExit(
                f"--task-settings takes TASK:FLAG=VALUE with FLAG one of {', '.join(PER_TASK)}; found {entry!r} "
                "(e.g. push:chunk=4)"
            )
        if name not in args.tasks:
            raise SystemExit(f"--task-settings {entry!r} names task {name!r}, which is not in --tasks {args.tasks}")
        if name == task:
            setattr(settings, flag, _parse(value, type(getattr(args, flag)), entry))
    return settings


PER_TASK = ("chunk", "history", "shift", "unshift", "steps", "scenes", "state_features", "scale_floor")
"""The flags ``--task-settings`` may set for one task."""


def _parse(value: str, kind: type, entry: str):
    if kind is list:  # names, comma-separated: push:state_features=gripper_opening,gripper_quaternion
        return [name for name in value.split(",") if name]
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"--task-settings {entry!r}: expected true or false, found {value!r}")
        return value.lower() == "true"
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"--task-settings {entry!r}: expected {kind.__name__}, found {value!r}") from None


def bc_config(settings: argparse.Namespace) -> BCConfig:
    return BCConfig(
        history=settings.history,
        chunk=settings.chunk,
        shift=settings.shift,
        unshift=settings.unshift,
        aux_weight=settings.aux_weight,
        state_features=tuple(settings.state_features),
        trunk_input=settings.trunk_input,
        trunk_positions=settings.trunk_positions,
        position_frame=settings.position_frame,
        static_frames=settings.static_frames,
        strides=tuple(settings.strides),
        keypoints=settings.keypoints,
        scale_floor=settings.scale_floor,
    )


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (flags at their defaults left out where the recipe allows)."""
    extra_flags = "".join(
        [
            f" --state-features {' '.join(args.state_features)}" if args.state_features else " --state-features",
            f" --trunk-input {args.trunk_input} --scenes {args.scenes}",
            f" --scene-source {args.scene_source}" if args.scene_source != TrainConfig.scene_source else "",
            f" --shift {args.shift}" if args.shift != BCConfig.shift else "",
            f" --trunk-positions {args.trunk_positions} --position-frame {args.position_frame}",
            f" --static-frames {args.static_frames}",
            " --unshift" if args.unshift else " --no-unshift",
            f" --cameras {' '.join(args.cameras)}" if tuple(args.cameras) != RecordConfig.cameras else "",
            f" --strides {' '.join(map(str, args.strides))}" if args.strides != [2, 2, 1] else "",
            f" --keypoints {args.keypoints}" if args.keypoints != BCConfig.keypoints else "",
            f" --scale-floor {args.scale_floor}" if args.scale_floor != BCConfig.scale_floor else "",
            f" --first-seed {args.first_seed}" if args.first_seed else "",
            f" --perturb {args.perturb}" if args.perturb else "",
            f" --task-settings {' '.join(args.task_settings)}" if args.task_settings else "",
            " --true-positions" if args.true_positions else "",
            " --merge" if args.merge else "",
            f" --name {args.name}" if args.name != "bc" else "",
        ]
    )
    return (
        f"python -m benchmarks.bc --tasks {' '.join(args.tasks)} --seeds {args.seeds} --demos {args.demos} "
        f"--steps {args.steps} --select-every {args.select_every} --episodes {args.episodes} "
        f"--image-size {args.image_size} --history {args.history} --chunk {args.chunk} --aux-weight {args.aux_weight}"
        f"{extra_flags}"
    )


def earlier_tasks(args: argparse.Namespace) -> dict:
    """With ``--merge``: the rows of ``results/<name>.json`` for the tasks not run now."""
    path = RESULTS / f"{args.name}.json"
    if not path.exists():
        print(f"--merge: no {path} yet, so nothing to keep: starting a new table")
        return {}
    earlier = json.loads(path.read_text())
    if "tasks" not in earlier:
        raise SystemExit(f"--merge: {path} has no per-task entries (written before --merge existed); run all tasks")
    return {task: entry for task, entry in earlier["tasks"].items() if task not in args.tasks}


def results_table(summary: dict) -> str:
    """The markdown table: one row per task, and the command (with commit and date) each row came from."""
    commands: list[tuple[str, str]] = []  # (command, "commit ..., date"), in order of first use
    rows = []
    for task, entry in summary["tasks"].items():
        facts = entry["machine"]
        key = (entry["command"], f"commit {facts['commit']}, {facts['date']}")
        if key not in commands:
            commands.append(key)
        rates = [r["success_rate"] for r in entry["runs"]]
        spread = statistics.pstdev(rates) if len(rates) > 1 else 0.0
        times = [r["train_seconds"] for r in entry["runs"]]
        speed = [r["samples_per_s"] for r in entry["runs"]]
        oracle = " - |" if summary.get("true_positions") else ""  # a merged row from a run without them
        if task in summary.get("true_positions", {}):
            per_seed = ", ".join(f"{r['true_positions_success']:.0%}" for r in entry["runs"])
            oracle = f" {summary['true_positions'][task]:.1%} ({per_seed}) |"
        rows.append(
            f"| {task} | {statistics.mean(rates):.1%} ± {spread:.1%} | {', '.join(f'{r:.0%}' for r in rates)} |"
            f"{oracle} {statistics.mean(times):.0f} s | {statistics.mean(speed):.0f} | {commands.index(key) + 1} |"
        )
    settings = next(iter(summary["tasks"].values()))["settings"]
    cameras = " + ".join(settings.get("cameras", RecordConfig.cameras))
    size, every, episodes = settings["image_size"], settings["select_every"], settings["episodes"]
    overhead = summary["data_overhead_detail"]
    oracle = ["with true positions (per seed)"] if summary.get("true_positions") else []
    header = ["task", "success (mean ± std over seeds)", "per seed", *oracle, "training time", "samples/s", "run"]
    oracle_note = (
        [
            "",
            "With true positions: the same checkpoints on the same episodes, acting on the simulator's object "
            "positions in place of their per-frame estimates (`robolearn eval --positions true`); the gap to the "
            "success beside it is what perception costs.",
        ]
        if oracle
        else []
    )
    return "\n".join(
        [
            "# Behaviour cloning (bc) from scripted demonstrations",
            "",
            f"Pixels ({cameras}, {size}x{size}) and proprioception; the checkpoint with the best success on 20 "
            f"separate held-out seeds (checked every {every} steps) is evaluated on {episodes} held-out episodes "
            "per seed."
            + (
                f" The demonstrations were recorded with scripted perturbations (`robolearn record --perturb "
                f"{settings['perturb']}`): the arm knocked off course for a few steps now and then, the operator's "
                "recovery imitated, the perturbation not."
                if settings.get("perturb")
                else ""
            ),
            "",
            f"| {' | '.join(header)} |",
            "|" + "---|" * len(header),
            *rows,
            *oracle_note,
            "",
            "Runs:",
            "",
            *[f"{i}. `{command}` ({when})" for i, (command, when) in enumerate(commands, 1)],
            "",
            f"Data-pipeline overhead (step time with sampling / step time on a preloaded batch, {overhead['task']}): "
            f"**{summary['data_overhead']}** (target at most 1.10).",
            "",
            machine_line(summary["machine"]),
            "",
        ]
    )


if __name__ == "__main__":
    main()
