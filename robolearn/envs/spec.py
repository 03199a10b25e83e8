"""The feature spec: the one description of observations and actions every stage shares.

Envs publish a spec, datasets store it in their metadata and policies are built
from it, so no stage asks the user to retype a shape. Entry names follow one
convention: ``state`` (proprioception), ``privileged`` (simulator-only object
state, for critics and low-dimensional baselines), ``rgb/<camera>`` (uint8
images, height x width x 3) and ``action``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium
import numpy as np


@dataclass(frozen=True)
class Feature:
    """One named array: its shape, dtype and what it means.

    ``layout`` optionally names consecutive slices of a vector as
    ``(name, size, units and frame)`` so a reader can find e.g. the gripper
    position inside ``state`` without a magic index.
    """

    shape: tuple[int, ...]
    dtype: str
    description: str
    low: float | None = None
    high: float | None = None
    layout: tuple[tuple[str, int, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "layout", tuple(tuple(entry) for entry in self.layout))
        np.dtype(self.dtype)  # raises on a dtype numpy does not know
        if self.layout and sum(size for _, size, _ in self.layout) != int(np.prod(self.shape)):
            raise ValueError(
                f"layout sizes add up to {sum(s for _, s, _ in self.layout)} but the shape {self.shape} "
                f"holds {int(np.prod(self.shape))} values; make the layout cover the vector exactly"
            )

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3

    def slice(self, name: str) -> slice:
        """The slice of the named layout entry, e.g. ``spec['state'].slice('gripper_position')``."""
        start = 0
        for entry, size, _ in self.layout:
            if entry == name:
                return slice(start, start + size)
            start += size
        known = ", ".join(entry for entry, _, _ in self.layout) or "none"
        raise KeyError(f"no layout entry {name!r}; this feature has: {known}")

    def entry_indices(self, names) -> list[int]:
        """Indices of the named layout entries, in the order named (``slice``'s KeyError for unknown names)."""
        size = int(np.prod(self.shape))
        return [index for name in names for index in range(*self.slice(name).indices(size))]

    def names(self, suffix: str) -> list[str]:
        """Names of the layout entries that end in ``suffix`` (e.g. every object ``position``)."""
        return [entry for entry, _, _ in self.layout if entry.endswith(suffix)]

    def indices(self, suffix: str) -> list[int]:
        """Indices of every layout entry whose name ends in ``suffix`` (e.g. all object ``position``s)."""
        indices, start = [], 0
        for entry, size, _ in self.layout:
            if entry.endswith(suffix):
                indices += list(range(start, start + size))
            start += size
        return indices

    def space(self) -> gymnasium.spaces.Box:
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        if self.dtype == "uint8":
            low, high = 0, 255
        return gymnasium.spaces.Box(low=low, high=high, shape=self.shape, dtype=np.dtype(self.dtype))

    def check(self, name: str, value: Any) -> None:
        """Raise a clear error if ``value`` does not match this feature."""
        array = np.asarray(value)
        if array.shape != self.shape:
            raise ValueError(f"{name}: expected shape {self.shape}, found {array.shape}")
        if array.dtype != np.dtype(self.dtype):
            raise ValueError(f"{name}: expected dtype {self.dtype}, found {array.dtype}")


@dataclass(frozen=True)
class FeatureSpec:
    """Observation features by name plus the action feature."""

    observations: dict[str, Feature]
    action: Feature

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(name.removeprefix("rgb/") for name in self.observations if name.startswith("rgb/"))

    def observation_space(self) -> gymnasium.spaces.Dict:
        return gymnasium.spaces.Dict({name: f.space() for name, f in self.observations.items()})

    def action_space(self) -> gymnasium.spaces.Box:
        return self.action.space()

    def to_json(self) -> dict[str, Any]:
        return {
            "observations": {name: asdict(f) for name, f in self.observations.items()},
            "action": asdict(self.action),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        try:
            return cls(
                observations={name: Feature(**f) for name, f in data["observations"].items()},
                action=Feature(**data["action"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"not a feature spec ({error}); expected {{'observations': {{name: feature}}, 'action': feature}}"
            ) from error
