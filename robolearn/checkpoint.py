"""Policy folders on disk: weights in safetensors, everything else in JSON. Nothing is pickled.

::

    policies/<name>/
        config.json                policy name and config, feature spec, task and env settings, training config
        model.safetensors          the last weights
        ema.safetensors            their exponential moving average (what evaluation uses by default)
        best.safetensors           the EMA weights with the best closed-loop success so far
        training_state.safetensors optimizer tensors, RNG states
        training_state.json        step, scheduler, optimizer hyper-parameters: with the above, enough to resume
        log.jsonl                  one JSON line per logged training step
        eval/<label>/              evaluation results and videos
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from robolearn.data.store import atomic_write_bytes, atomic_write_json
from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import Policy, make_policy

FORMAT = "robolearn-policy"
FORMAT_VERSION = 1
WEIGHTS = ("model", "ema", "best")


class PolicyFolderError(ValueError):
    """A policy folder cannot be used; the message names the file and the fix."""


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors to a safetensors file atomically (temporary name, fsync, rename)."""
    data = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    for key, value in data.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FloatingPointError(f"refusing to save {path.name}: tensor {key!r} holds NaN or inf")
    blob = save(data)
    atomic_write_bytes(path, lambda file: file.write(blob))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PolicyFolderError(f"{path} does not exist")
    if path.suffix != ".safetensors":
        raise PolicyFolderError(f"{path}: robolearn loads weights only from .safetensors files, never pickles")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise PolicyFolderError(f"{path}: not a readable safetensors file ({error})") from error


def write_config(folder: Path, policy: Policy, extra: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy": policy.name,
        "policy_config": policy.config_json(),
        "features": policy.features.to_json(),
        **extra,
    }
    atomic_write_json(folder / "config.json", config)


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise PolicyFolderError(f"{folder} is not a policy folder (no config.json); train one with `robolearn train`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PolicyFolderError(f"{path}: not valid JSON ({error})") from error
    if config.get("format") != FORMAT:
        raise PolicyFolderError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise PolicyFolderError(
            f"{path}: format_version {config.get('format_version')!r} is newer than this robolearn reads "
            f"(up to {FORMAT_VERSION}); upgrade robolearn"
        )
    return config


def load_policy(folder: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> Policy:
    """Rebuild a policy from its folder and load the chosen weights (model, ema or best)."""
    folder = Path(folder)
    if weights not in WEIGHTS:
        raise PolicyFolderError(f"weights must be one of {WEIGHTS}, found {weights!r}")
    config = read_config(folder)
    features = FeatureSpec.from_json(config["features"])
    policy = make_policy(config["policy"], features)
    policy = make_policy(config["policy"], features, type(policy).config_from_json(config["policy_config"]))
    path = folder / f"{weights}.safetensors"
    if weights == "best" and not path.is_file():
        path = folder / "ema.safetensors"  # no closed-loop evaluation ran during training
    if weights in ("best", "ema") and not path.is_file() and (folder / "model.safetensors").is_file():
        path = folder / "model.safetensors"  # RL fine-tuning keeps no moving average
    state = load_weights(path)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PolicyFolderError(f"{path}: weights do not fit the policy (missing {missing}, unexpected {unexpected})")
    return policy.to(device).eval()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state split into tensors (for safetensors) and the rest (for JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


__all__ = [
    "PolicyFolderError",
    "load_policy",
    "load_weights",
    "optimizer_tensors",
    "read_config",
    "restore_optimizer",
    "save_weights",
    "write_config",
]
