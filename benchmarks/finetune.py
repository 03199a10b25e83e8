"""RL fine-tuning: how far and how fast each mode takes a BC policy, against RL from scratch.

Per task: record ``--demos`` scripted demonstrations, train one ``bc`` policy on them
(its success on ``--episodes`` held-out episodes is the start), then fine-tune it with
each mode in ``--modes`` and each seed, and evaluate the best checkpoint (chosen on
separate held-out seeds) on ``--episodes`` held-out episodes. ``scratch`` is RL with
the same demonstrations and budget but no BC actor.

Writes ``benchmarks/results/finetune.{md,json}`` and ``finetune_<label>.png`` (success against
env steps, mean and spread over seeds) and prints one final JSON line: per task and
mode, BC start success, final success, env steps to reach 90% and wall-clock.
Cases from the issue: ``--task lift --demos 5 --steps 20000`` and ``--task stack
--demos 20 --steps 100000``.

Long benchmarks come in pieces. A rerun with the same ``--label`` and the same
settings keeps the runs that section already holds and runs only the missing
(mode, seed) pairs, so ``--mode-seeds rlpd=3`` after a one-seed run adds two seeds.
With ``--keep``, ``--until N`` stops each fine-tuning run at N env steps and leaves
it resumable; the same command without ``--until`` (or with a larger one) resumes
it. Wall-clock is the run's own training clock, summed over its pieces.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.common import COMMIT, RESULTS, machine, machine_line
from robolearn.data.scenes import SOURCES as SCENE_SOURCES
from robolearn.evaluate import EvalConfig
from robolearn.evaluate import run as evaluate
from robolearn.finetune import FinetuneConfig, settings_differences
from robolearn.finetune import run as finetune
from robolearn.plots import plot_curves
from robolearn.policies.bc import BCConfig
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.rl.agent import AgentConfig
from robolearn.train import TrainConfig
from robolearn.train import run as train

SHOWN_IF_CHANGED = (
    "bc_steps",
    "critics",
    "eval_every",
    "eval_episodes",
    "image_size",
    "refit_positions",
    "reward",
    "utd",
    "workers",
)
"""Flags the results' command line names only when a run changed them from their defaults."""


REWARDS = {
    "sparse": "sparse success reward",
    "dense": "the task's dense staged reward",
    "shaped": "sparse success reward plus potential-based shaping from the staged reward",
}
"""How the results describe each ``--reward``."""


def steps_to(curve: list[dict], level: float) -> int | None:
    """Env steps at the first evaluation with success at or above ``level``."""
    return next((row["env_steps"] for row in curve if row["success"] >= level), None)


def finished(out: Path) -> bool:
    """Whether the fine-tuning run in ``out`` went all its steps (its training state says so)."""
    state = json.loads((out / "training_state.json").read_text())
    config = json.loads((out / "config.json").read_text())["finetune"]
    return state["env_steps"] >= config["steps"]


def resumable(out: Path, config: FinetuneConfig) -> bool:
    """Whether ``out`` holds an unfinished run made with ``config``'s settings (one to resume, not redo)."""
    if not (out / "training_state.json").is_file() or finished(out):
        return False
    if differences := settings_differences(out, config):
        print(f"{out} holds an unfinished run with other settings ({'; '.join(differences)}): starting it afresh")
    return not differences


SECTION_FLAGS = ("modes", "seeds", "mode_seeds", "keep", "label", "until", "true_positions")
"""Settings that choose which runs a section holds or where they live, not how each run goes."""


def finished_runs(args, label: str) -> list[dict]:
    """The runs the results section ``label`` already holds, when it was made with the same settings."""
    path = RESULTS / "finetune.json"
    section = json.loads(path.read_text()).get("tasks", {}).get(label) if path.exists() else None
    if section is None:
        return []
    now = {key: str(value) for key, value in vars(args).items() if key not in SECTION_FLAGS}
    then = {key: value for key, value in section["settings"].items() if key not in SECTION_FLAGS}
    defaults = build_parser()
    for key in now.keys() - then.keys():  # a flag added since the section was made: it ran at the default
        then[key] = str(defaults.get_default(key))
    if differences := sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key)):
        print(f"section {label!r} was made with other settings ({', '.join(differences)}): replacing it")
        return []
    return [
        run
        for run in section["runs"]
        if run["mode"] in args.modes and run["seed"] < args.mode_seeds.get(run["mode"], args.seeds)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--modes", nargs="+", default=["ibrl", "residual", "rlpd", "scratch"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--mode-seeds", nargs="*", default=[], metavar="MODE=N", help="seeds for some modes instead of --seeds"
    )
    parser.add_argument("--demos", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20_000, help="env steps of fine-tuning")
    parser.add_argument("--bc-steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--eval-episodes", type=int, default=20, help="held-out episodes per model-selection check")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes of the final evaluations")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=list(RecordConfig.cameras),
        help="cameras the demonstrations record and the policy sees (any camera of the task, e.g. view)",
    )
    parser.add_argument("--workers", type=int, default=1, help="exploration worker processes")
    parser.add_argument("--utd", type=float, default=1.0)
    parser.add_argument(
        "--critics", type=int, default=FinetuneConfig.critics, help="critics in the ensemble (default: robolearn's)"
    )
    parser.add_argument(
        "--reward", default=FinetuneConfig.reward, choices=list(REWARDS), help="fine-tuning reward (robolearn's)"
    )
    parser.add_argument("--reset-from-demos", default="reverse", choices=["none", "uniform", "reverse"])
    parser.add_argument(
        "--asymmetric", action=argparse.BooleanOptionalAction, default=True, help="privileged critic (not for ibrl)"
    )
    parser.add_argument("--bc-weight", type=float, default=0.0)
    parser.add_argument("--prior-weight", type=float, default=0.0, help="penalty on departing from the BC action")
    parser.add_argument(
        "--refit-positions",
        type=int,
        default=FinetuneConfig.refit_positions,
        help="Adam steps refitting the position estimator on the visited frames before every check (0: off)",
    )
    parser.add_argument(
        "--residual-scale", type=float, default=None, help="residual: largest residual (default: robolearn's)"
    )
    parser.add_argument(
        "--noise-start", type=float, default=None, help="exploration noise at the start (default: per mode)"
    )
    parser.add_argument("--noise-decay", type=float, default=0.25, help="share of the steps the noise decays over")
    parser.add_argument(
        "--bc-aux-weight",
        type=float,
        default=1.0,
        help="BC auxiliary object-position loss (encoder that sees the cube)",
    )
    parser.add_argument(
        "--bc-trunk-input",
        default="relative",
        choices=["features", "positions", "relative"],
        help="what the BC trunk sees (bc.md's recipe: relative)",
    )
    parser.add_argument("--bc-chunk", type=int, default=4, help="BC action chunk")
    parser.add_argument("--bc-unshift", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bc-scenes", type=int, default=5000, help="labelled scenes for the BC position estimator")
    parser.add_argument(
        "--bc-scene-source",
        default=TrainConfig.scene_source,
        choices=SCENE_SOURCES,
        help="where the BC scenes come from (robolearn train --scene-source)",
    )
    parser.add_argument(
        "--true-positions",
        action="store_true",
        help="also evaluate the BC policy and every run's best checkpoint on the simulator's true object positions "
        "(robolearn eval --positions true): the gap is what perception costs; runs reused from --keep get it too",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep demos and policies in this folder")
    parser.add_argument(
        "--until",
        type=int,
        default=None,
        help="with --keep: stop each run at this many env steps, resumable by the same command without --until",
    )
    parser.add_argument(
        "--label",
        default=None,
        help="section of the results this run writes (default: the task)",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    label = args.label or args.task
    try:
        args.mode_seeds = {mode: int(n) for mode, n in (item.split("=") for item in args.mode_seeds)}
    except ValueError:
        parser.error(f"--mode-seeds takes MODE=N, e.g. ibrl=3; found {' '.join(args.mode_seeds)}")
    if unknown := sorted(set(args.mode_seeds) - set(args.modes)):
        parser.error(f"--mode-seeds names {', '.join(unknown)}, not in --modes {' '.join(args.modes)}; add it there")
    if args.true_positions and args.bc_trunk_input == "features":
        parser.error("--true-positions needs a BC policy that estimates object positions: --bc-trunk-input relative")
    if args.until is not None and args.keep is None:
        parser.error("--until leaves runs to resume later, which needs --keep DIR to keep them in")
    try:  # the agent's own checks, before minutes of demonstrations and BC training
        AgentConfig(critics=args.critics)
    except ValueError as error:
        parser.error(f"--critics: {error}")
    bc_config = BCConfig(
        history=2,
        chunk=args.bc_chunk,
        aux_weight=args.bc_aux_weight,
        trunk_input=args.bc_trunk_input,
        state_features=("gripper_opening",) if args.bc_trunk_input == "relative" else (),
        unshift=args.bc_unshift,
    )
    recipe = (
        f"history 2, chunks of {args.bc_chunk}, trunk input {args.bc_trunk_input}, auxiliary object-position "
        f"weight {args.bc_aux_weight}{', unshift' if args.bc_unshift else ''}, {args.bc_scenes} "
        + {
            "random": "random scenes",
            "operator": "scenes from the scripted operator",
            "both": "scenes (half random, half from the scripted operator)",
        }[args.bc_scene_source]
        + (", trunk on recorded positions" if args.bc_trunk_input != "features" else "")
    )

    root = args.keep or Path(tempfile.mkdtemp(prefix="robolearn-ft-"))
    runs, combined = finished_runs(args, label), {"tasks": {}}
    try:
        # With --keep, later runs reuse the demonstrations and BC policy made with the same counts and sizes.
        cameras = "" if args.cameras == list(RecordConfig.cameras) else "-" + "-".join(args.cameras)
        dataset = root / "demos" / f"{args.task}-{args.demos}demos-{args.image_size}px{cameras}"
        if not dataset.exists():
            record(
                RecordConfig(
                    task=args.task,
                    out=dataset,
                    episodes=args.demos,
                    cameras=tuple(args.cameras),
                    image_size=args.image_size,
                )
            )
        bc_name = (
            f"{args.task}-bc-{args.bc_trunk_input}-c{args.bc_chunk}-aux{args.bc_aux_weight:g}-s{args.bc_scenes}"
            + ("" if args.bc_scene_source == "random" else f"-{args.bc_scene_source}")
            + ("-unshift" if args.bc_unshift else "")
            + f"-{args.bc_steps}steps-{args.demos}demos-{args.image_size}px{cameras}"
        )
        bc_folder = root / "policies" / bc_name
        if not (bc_folder / "config.json").exists():
            train(
                TrainConfig(
                    dataset=dataset,
                    out=bc_folder,
                    steps=args.bc_steps,
                    eval_every=500,
                    eval_episodes=20,
                    scenes=args.bc_scenes,
                    scene_source=args.bc_scene_source,
                    bc=bc_config,
                )
            )
        bc_success = evaluate(EvalConfig(bc_folder, episodes=args.episodes, workers=2, label="benchmark"))[
            "success_rate"
        ]
        bc_true = true_positions_success(args, bc_folder) if args.true_positions else None
        if runs and runs[0]["bc_start"] != bc_success:
            print(
                f"the BC policy now starts at {bc_success:.0%}, the {len(runs)} runs in section {label!r} started "
                f"from {runs[0]['bc_start']:.0%}: not reusing them"
            )
            runs = []
        elif runs:
            print(f"reusing {len(runs)} finished runs of section {label!r}: {[(r['mode'], r['seed']) for r in runs]}")
            for run in runs:  # runs measured before wall-clock was the run's own clock get it from their log
                log = root / "policies" / f"{label}-{run['mode']}-{run['seed']}" / "log.jsonl"
                last = json.loads(log.read_text().splitlines()[-1]) if log.is_file() else {}
                kept = [last.get("env_steps"), last.get("success")] == run["curve"][-1]  # that very run
                if kept:
                    run["wall_clock_s"] = last["seconds"]
                if args.true_positions and "true_positions_success" not in run:
                    if kept:
                        run["true_positions_success"] = true_positions_success(args, log.parent)
                    else:
                        print(f"{log.parent} is not the run section {label!r} holds: no true-positions column")
        if runs:
            combined = write_results(args, label, recipe, runs, bc_success, bc_true)
        unfinished = 0
        for mode in args.modes:
            for seed in range(args.mode_seeds.get(mode, args.seeds)):
                if any(r["mode"] == mode and r["seed"] == seed for r in runs):
                    continue
                out = root / "policies" / f"{label}-{mode}-{seed}"  # a section's runs, resumable
                config = FinetuneConfig(
                    policy=bc_folder,
                    out=out,
                    mode=mode,
                    steps=args.steps,
                    eval_every=args.eval_every,
                    eval_episodes=args.eval_episodes,
                    workers=args.workers,
                    utd=args.utd,
                    critics=args.critics,
                    reward=args.reward,
                    reset_from_demos=args.reset_from_demos,
                    asymmetric=args.asymmetric and mode != "ibrl",
                    bc_weight=args.bc_weight,
                    prior_weight=args.prior_weight,
                    refit_positions=args.refit_positions,
                    **({} if args.residual_scale is None else {"residual_scale": args.residual_scale}),
                    noise_start=args.noise_start,
                    noise_decay=args.noise_decay,
                    seed=seed,
                    until=args.until,
                )
                resume = args.keep is not None and resumable(out, config)
                if not resume:
                    shutil.rmtree(out, ignore_errors=True)
                finetune(replace(config, resume=resume))
                if not finished(out):
                    unfinished += 1
                    continue
                curve = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
                final = evaluate(EvalConfig(out, episodes=args.episodes, workers=2, weights="best", label="benchmark"))
                runs.append(
                    {
                        "task": args.task,
                        "mode": mode,
                        "seed": seed,
                        "bc_start": bc_success,
                        "final_success": final["success_rate"],
                        "final_ci95": final["success_ci95"],
                        "steps_to_90": steps_to(curve, 0.9),
                        "wall_clock_s": curve[-1]["seconds"],
                        "updates": curve[-1]["updates"],
                        "curve": [[row["env_steps"], row["success"]] for row in curve],
                        "commit": COMMIT,  # the code this run was made with (a section's runs can span commits)
                    }
                )
                if args.true_positions:
                    runs[-1]["true_positions_success"] = true_positions_success(args, out)
                print(runs[-1], flush=True)
                combined = write_results(args, label, recipe, runs, bc_success, bc_true)
        if unfinished:
            print(f"{unfinished} runs stopped at --until {args.until}; run the same command without --until to finish")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    final = {name: combined[name] for name in combined["tasks"]} | {"benchmark": "finetune"}
    print(json.dumps(final))  # the final line


def true_positions_success(args, folder: Path) -> float:
    """Success of ``folder``'s best weights on the final evaluation's episodes, acting on the true object
    positions instead of its estimates."""
    config = EvalConfig(folder, episodes=args.episodes, workers=2, positions="true", label="benchmark-true-positions")
    return evaluate(config)["success_rate"]


def run_commits(runs: list, section_commit: str) -> list[str]:
    """A line naming the commit each run was made at, when some run's differs from the section's (runs made
    before runs recorded their commit count as unrecorded)."""
    commits = {(r["mode"], r["seed"]): r.get("commit", "not recorded") for r in runs}
    if set(commits.values()) == {section_commit}:
        return []
    listed = ", ".join(f"{mode} seed {seed}: {commit}" for (mode, seed), commit in commits.items())
    return ["", f"The runs span commits: {listed}."]


def write_results(args, label: str, recipe: str, runs: list, bc_success: float, bc_true: float | None) -> dict:
    """This run's section of finetune.md/.json and its PNG, rewritten after every fine-tuning run so that
    an interrupted benchmark keeps the runs it finished; returns the combined results."""
    modes = [mode for mode in args.modes if any(r["mode"] == mode for r in runs)]
    runs = sorted(runs, key=lambda r: (modes.index(r["mode"]), r["seed"]))
    curves = {mode: [tuple(zip(*r["curve"])) for r in runs if r["mode"] == mode] for mode in modes}
    summary = {"benchmark": "finetune", "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    per_mode, rows = {}, []
    # The diagnostic columns, when this benchmark measured the BC start on true positions and every run has them.
    truth = bc_true is not None and bool(runs) and all("true_positions_success" in r for r in runs)
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        finals = [r["final_success"] for r in mine]
        reached = [r["steps_to_90"] for r in mine if r["steps_to_90"] is not None]
        per_mode[mode] = {
            "bc_start": mine[0]["bc_start"],
            "final_success": round(statistics.mean(finals), 3),
            "final_spread": round(statistics.pstdev(finals), 3) if len(finals) > 1 else 0.0,
            "steps_to_90": round(statistics.median(reached)) if len(reached) == len(mine) else None,
            "reached_90": f"{len(reached)}/{len(mine)}",
            "wall_clock_s": round(statistics.mean(r["wall_clock_s"] for r in mine), 1),
        }
        m = per_mode[mode]
        rows.append(
            f"| {mode} | {m['bc_start']:.0%} | {m['final_success']:.1%} ± {m['final_spread']:.1%} "
            f"| {', '.join(f'{v:.0%}' for v in finals)} | {m['steps_to_90'] if m['steps_to_90'] is not None else '-'} "
            f"({m['reached_90']}) | {m['wall_clock_s'] / 60:.1f} min |"
        )
        if truth:
            on_truth = [r["true_positions_success"] for r in mine]
            m |= {"bc_start_true_positions": bc_true, "true_positions_success": round(statistics.mean(on_truth), 3)}
            rows[-1] += f" {bc_true:.0%} | {', '.join(f'{v:.0%}' for v in on_truth)} |"
    summary[label] = per_mode
    summary["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_curves(
        RESULTS / f"finetune_{label}.png",
        {f"{mode}": runs_ for mode, runs_ in curves.items()},
        ylabels=(f"success on {args.eval_episodes} held-out episodes",),
        title=f"{args.task}, {args.demos} demos, BC start {bc_success:.0%}",
    )
    seeds_flag = f"--mode-seeds {' '.join(f'{m}={n}' for m, n in args.mode_seeds.items())} " if args.mode_seeds else ""
    flags = "" if args.noise_start is None else f" --noise-start {args.noise_start}"
    defaults = build_parser()
    residual_scale = FinetuneConfig.residual_scale if args.residual_scale is None else args.residual_scale
    if args.prior_weight:
        flags += f" --prior-weight {args.prior_weight}"
    if args.residual_scale is not None:
        flags += f" --residual-scale {args.residual_scale}"
    if args.true_positions:
        flags += " --true-positions"
    if args.bc_scene_source != TrainConfig.scene_source:
        flags += f" --bc-scene-source {args.bc_scene_source}"
    if args.cameras != list(RecordConfig.cameras):
        flags += f" --cameras {' '.join(args.cameras)}"
    noise_start = "the mode default" if args.noise_start is None else args.noise_start
    for flag in SHOWN_IF_CHANGED:
        if getattr(args, flag) != defaults.get_default(flag):
            flags += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    table = "\n".join(
        [
            f"# RL fine-tuning: {label}",
            "",
            f"`python -m benchmarks.finetune --task {args.task} --modes {' '.join(args.modes)} --seeds {args.seeds} "
            f"{seeds_flag}"
            f"--demos {args.demos} --steps {args.steps} --episodes {args.episodes} --bc-aux-weight {args.bc_aux_weight} "
            f"--bc-trunk-input {args.bc_trunk_input} --bc-chunk {args.bc_chunk} "
            f"{'--bc-unshift' if args.bc_unshift else '--no-bc-unshift'} --bc-scenes {args.bc_scenes}{flags} "
            f"--noise-decay {args.noise_decay} --label {label}`: "
            f"a `bc` policy ({recipe}, {args.bc_steps} steps) from {args.demos} scripted demonstrations at "
            f"{args.image_size} px (cameras {', '.join(args.cameras)}), fine-tuned with "
            f"{REWARDS[args.reward]} for {args.steps} env steps (update-to-data ratio {args.utd}, "
            f"{args.critics} critics, demo-state resets {args.reset_from_demos}, "
            + (
                f"position estimator refitted on the visited frames ({args.refit_positions} steps) before every check, "
                if args.refit_positions
                else ""
            )
            + "privileged critic "
            f"{'on except for ibrl' if args.asymmetric else 'off'}, BC weight {args.bc_weight}, prior weight "
            f"{args.prior_weight}, residual scale {residual_scale}, exploration noise from {noise_start} decaying "
            f"over {args.noise_decay:.0%} of the steps); final success is the "
            f"best checkpoint (chosen on {args.eval_episodes} separate held-out seeds every {args.eval_every} steps) on "
            f"{args.episodes} held-out episodes. Steps to 90%: median over seeds of the first check at or above 90% "
            "(- when a seed never got there).",
            "",
            "| mode | BC start | final success (mean ± std) | per seed | env steps to 90% (seeds) | wall-clock per run |"
            + (" BC start, true positions | per seed, true positions |" if truth else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if truth else ""),
            *rows,
            *(
                [
                    "",
                    "True positions: the same weights on the same episodes acting on the simulator's object positions "
                    "in place of the BC encoder's per-frame estimates (`robolearn eval --positions true`, a "
                    "diagnostic); the gap to the success beside it is what perception costs.",
                ]
                if truth
                else []
            ),
            "",
            f"Curves: `finetune_{label}.png`. " + machine_line(summary["machine"]),
            *run_commits(runs, summary["machine"]["commit"]),
            "",
        ]
    )
    # One results file for every task and variant: this run replaces its label's section and keeps the others.
    previous = json.loads((RESULTS / "finetune.json").read_text()) if (RESULTS / "finetune.json").exists() else {}
    tasks = {name: entry for name, entry in previous.get("tasks", {}).items() if name != label}
    tasks[label] = summary | {"markdown": table}
    combined = {name: entry[name] for name, entry in tasks.items()}
    combined |= {"benchmark": "finetune", "tasks": tasks}
    markdown = "\n".join(entry["markdown"] for _, entry in sorted(tasks.items()))
    (RESULTS / "finetune.json").write_text(json.dumps(combined, indent=2) + "\n")
    (RESULTS / "finetune.md").write_text(markdown)
    return combined


if __name__ == "__main__":
    main()
