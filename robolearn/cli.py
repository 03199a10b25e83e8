"""The ``robolearn`` command. Each subcommand is a typed config dataclass; tyro turns it into flags."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

import robolearn  # noqa: F401  (chooses the GL backend before MuJoCo loads)
from robolearn import evaluate, finetune, preview, record, train
from robolearn.data import DatasetError, inspect, replay, rerender, robomimic
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


COMMANDS = {
    "envs": (EnvsConfig, list_envs),
    "preview": (preview.PreviewConfig, preview.run),
    "record": (record.RecordConfig, record.run),
    "info": (inspect.InfoConfig, inspect.info),
    "verify": (inspect.VerifyConfig, inspect.verify),
    "replay": (replay.ReplayConfig, replay.replay),
    "render": (rerender.RenderConfig, rerender.render),
    "export": (robomimic.ExportConfig, robomimic.export),
    "import": (robomimic.ImportConfig, robomimic.import_),
    "train": (train.TrainConfig, train.run),
    "finetune": (finetune.FinetuneConfig, finetune.run),
    "eval": (evaluate.EvalConfig, evaluate.run),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``robolearn`` console script."""
    config = tyro.extras.subcommand_cli_from_dict(
        {name: Annotated[config_type, tyro.conf.arg(name=name)] for name, (config_type, _) in COMMANDS.items()},
        description="robolearn: record demonstrations, train visuomotor policies and evaluate them in MuJoCo.",
        args=argv,
    )
    for config_type, command in COMMANDS.values():
        if isinstance(config, config_type):
            try:
                status = command(config)
            except (DatasetError, KeyError, ValueError, FileNotFoundError, FloatingPointError) as error:
                # Bad input: one clear line, no traceback. Anything else is a bug and shows its traceback.
                message = error.args[0] if isinstance(error, KeyError) and error.args else error
                print(
                    f"robolearn {type(config).__name__.removesuffix('Config').lower()}: error: {message}",
                    file=sys.stderr,
                )
                sys.exit(2)
            if isinstance(status, int) and not isinstance(status, bool):
                sys.exit(status)
            return


if __name__ == "__main__":
    main()
