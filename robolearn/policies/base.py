"""The policy interface every method shares, and the policy registry.

A policy is an ``nn.Module`` built from a feature spec and its own config dataclass:

- ``loss(batch) -> (loss, metrics)``: one training objective on a batch of dataset samples;
- ``act(observation) -> action``: one raw env observation (numpy, as the env returns it)
  to one raw action (numpy, in the env's action space); normalisation, observation
  history and action chunking happen inside;
- ``reset()``: forget history and queued actions at the start of an episode.

Batches are dicts of tensors: ``obs/<feature>`` with shape (B, history, ...) (images
uint8), ``actions`` (B, chunk, A) and ``action_mask`` (B, chunk), 1 where the action
exists (chunks running past an episode's end are padded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from robolearn.data.store import jsonable
from robolearn.envs.spec import FeatureSpec

POLICIES: dict[str, type[Policy]] = {}
_P = TypeVar("_P", bound=type)


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator: register a ``Policy`` subclass under ``name``."""

    def decorate(cls: _P) -> _P:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return decorate


class Policy(nn.Module):
    """Base class: holds the feature spec and config and defines the interface."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type]

    def __init__(self, features: FeatureSpec, config: Any) -> None:
        super().__init__()
        self.features = features
        self.config = config

    # The interface -------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss(batch)``: so DistributedDataParallel, which wraps ``forward``, synchronises gradients."""
        return self.loss(batch)

    def fit_normalization(self, batch: dict[str, torch.Tensor]) -> None:
        """Set normalisation statistics from (a large sample of) the training data."""

    # What the data loader must provide -------------------------------------
    @property
    def history(self) -> int:
        return 1

    @property
    def chunk(self) -> int:
        return 1

    @property
    def observation_keys(self) -> tuple[str, ...]:
        return tuple(self.features.observations)

    @property
    def training_keys(self) -> tuple[str, ...]:
        """Observation keys the training batches need: those ``act`` reads, plus any training-only targets."""
        return self.observation_keys

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # Serialisation helpers -------------------------------------------------
    def config_json(self) -> dict[str, Any]:
        return jsonable(asdict(self.config))

    @classmethod
    def config_from_json(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls.config_class)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"policy config has unknown keys {sorted(unknown)} for {cls.name!r}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls.config_class(**values)


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU steps are compared bit for bit on resume)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def make_policy(name: str, features: FeatureSpec, config: Any = None) -> Policy:
    _builtin_policies()
    if name not in POLICIES:
        raise KeyError(f"unknown policy {name!r}; available: {', '.join(sorted(POLICIES))}")
    cls = POLICIES[name]
    return cls(features, config if config is not None else cls.config_class())


def _builtin_policies() -> None:
    import robolearn.policies.bc  # noqa: F401
    from robolearn.rl.agent import builtin_agents

    builtin_agents()
