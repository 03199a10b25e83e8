"""The ``robolearn`` command. Each subcommand is a typed config dataclass; tyro turns it into flags.

Only the chosen subcommand's module is imported, so that commands without a network (``envs``,
``record``, ``info``, ...) start without loading torch (seconds on a small CPU).
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass

import tyro

import robolearn  # noqa: F401  (chooses the GL backend before MuJoCo loads)
from robolearn.data import DatasetError
from robolearn.envs import make, task_names


@dataclass
class EnvsConfig:
    """List the tasks with their observation and action specs."""

    task: str | None = None
    """Show one task in detail (id, file path or gym:/dmc: id); default: every registered task."""
    json: bool = False
    """Print the feature specs as JSON instead of a table."""


def list_envs(config: EnvsConfig) -> None:
    names = [config.task] if config.task else task_names()
    specs = {}
    for name in names:
        env = make(name, cameras=("front", "wrist")) if ":" not in name else make(name)
        specs[name] = (env, env.features)
    if config.json:
        print(json.dumps({name: features.to_json() for name, (_, features) in specs.items()}, indent=2))
        return
    for name, (env, features) in specs.items():
        task = getattr(env, "task", None)
        description = getattr(task, "description", "")
        print(f"{name}: {description} (max {env.max_steps} steps at {env.control_rate} Hz)")
        for key, feature in {**features.observations, "action": features.action}.items():
            bounds = f" in [{feature.low}, {feature.high}]" if feature.low is not None else ""
            print(f"    {key:<14} {str(feature.shape):<14} {feature.dtype:<8} {feature.description}{bounds}")
            if config.task:
                for entry, size, meaning in feature.layout:
                    print(f"        {entry:<22} {size:>3}  {meaning}")
        env.close()


COMMANDS = {  # name: (module, config class, function, the config's first docstring line for --help)
    "envs": ("robolearn.cli", "EnvsConfig", "list_envs", "List the tasks with their observation and action specs."),
    "preview": (
        "robolearn.preview",
        "PreviewConfig",
        "run",
        "Record scripted episodes of tasks into one video: a quick look at what each task asks.",
    ),
    "record": ("robolearn.record", "RecordConfig", "run", "Record demonstrations of a task into a dataset folder."),
    "info": (
        "robolearn.data.inspect",
        "InfoConfig",
        "info",
        "Summarise a dataset: episodes, steps, success, lengths, action ranges, cameras, disk size.",
    ),
    "verify": (
        "robolearn.data.inspect",
        "VerifyConfig",
        "verify",
        "Check every file of a dataset; with --repair, move damaged ones to quarantine/.",
    ),
    "replay": (
        "robolearn.data.replay",
        "ReplayConfig",
        "replay",
        "Play a stored episode back from its states (exact) or its actions (drift report); optionally film it.",
    ),
    "render": (
        "robolearn.data.rerender",
        "RenderConfig",
        "render",
        "Re-render camera frames of a dataset from its stored states into a new dataset.",
    ),
    "export": (
        "robolearn.data.robomimic",
        "ExportConfig",
        "export",
        "Write a dataset as one robomimic HDF5 file (data/demo_i/{actions, states, rewards, dones, obs/*}).",
    ),
    "import": (
        "robolearn.data.robomimic",
        "ImportConfig",
        "import_",
        "Make a robolearn dataset from a robomimic HDF5 file (exported by robolearn, or robomimic's own).",
    ),
    "train": ("robolearn.train", "TrainConfig", "run", "Train a policy on a dataset of demonstrations."),
    "finetune": (
        "robolearn.finetune",
        "FinetuneConfig",
        "run",
        "Fine-tune a behaviour-cloned policy with RL in simulation.",
    ),
    "eval": (
        "robolearn.evaluate",
        "EvalConfig",
        "run",
        "Evaluate a policy in closed loop on held-out seeds and write a results table and videos.",
    ),
}

USAGE = "usage: robolearn {" + ",".join(COMMANDS) + "} [flags]   (robolearn COMMAND --help: its flags)"


def command(name: str):
    """The config class and function of subcommand ``name``, importing only its module."""
    module, config_type, function, _ = COMMANDS[name]
    module = importlib.import_module(module)
    return getattr(module, config_type), getattr(module, function)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``robolearn`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("\nrobolearn: record demonstrations, train visuomotor policies and evaluate them in MuJoCo.\n")
        for name, (*_, description) in COMMANDS.items():
            print(f"  {name:<9} {description}")
        sys.exit(0 if argv else 2)
    name = argv[0]
    if name not in COMMANDS:
        print(USAGE, file=sys.stderr)
        print(f"robolearn: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    config_type, function = command(name)
    config = tyro.cli(config_type, args=argv[1:], prog=f"robolearn {name}")
    try:
        status = function(config)
    except (DatasetError, KeyError, ValueError, FileNotFoundError, FloatingPointError) as error:
        # Bad input: one clear line, no traceback. Anything else is a bug and shows its traceback.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"robolearn {name}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C where a command has nothing to keep
        print(f"\nrobolearn {name}: interrupted {interrupt}".rstrip(), file=sys.stderr)
        sys.exit(130)
    if isinstance(status, dict) and status.get("interrupted"):
        sys.exit(130)  # the shell's code for Ctrl-C; what finished was kept
    if isinstance(status, int) and not isinstance(status, bool):
        sys.exit(status)


if __name__ == "__main__":
    main()
