"""Replay of whole episodes in a fixed-size ring, sampled as n-step transitions.

Every stored frame is a dict of fields (features or uint8 frames, proprioception,
privileged state, the base policy's action). An episode of T actions stores T + 1
frames; frame t also holds the action taken there, the discounted sum of the next
n rewards and the discount to bootstrap with (0 when the episode terminated within
those n steps). When the ring is full the oldest whole episodes are dropped.

Tensors live on the buffer's device (the GPU when training there), so sampling a
batch is one gather per field with no copies through the host.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch


class ReplayBuffer:
    """Whole episodes in a ring of ``capacity`` frames; ``sample`` draws n-step transitions uniformly."""

    def __init__(
        self,
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        action_size: int,
        capacity: int,
        device: torch.device | str = "cpu",
        n_step: int = 3,
        gamma: float = 0.99,
    ) -> None:
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, found {n_step}")
        self.capacity, self.n_step, self.gamma = int(capacity), n_step, gamma
        self.device = torch.device(device)
        self.frames = {
            key: torch.zeros((capacity, *shape), dtype=dtype, device=device) for key, (shape, dtype) in fields.items()
        }
        self.actions = torch.zeros((capacity, action_size), device=device)
        self.returns = torch.zeros(capacity, device=device)
        self.discounts = torch.zeros(capacity, device=device)
        self.next_offset = torch.zeros(capacity, dtype=torch.long, device=device)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.imitate = torch.ones(capacity, dtype=torch.bool, device=device)  # actions a BC term may imitate
        self.episodes: deque[tuple[int, int]] = deque()  # (first slot, frames) oldest first
        self.cursor = 0
        self.used = 0
        self.transitions = 0
        self._valid_index: torch.Tensor | None = None

    def __len__(self) -> int:
        """Transitions that can be sampled."""
        return self.transitions

    def add_episode(
        self,
        frames: dict[str, np.ndarray | torch.Tensor],
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
        imitate: np.ndarray | None = None,
    ) -> None:
        """Store one episode: ``frames`` fields of length T + 1, ``actions`` (T, A), ``rewards`` (T,).

        ``terminated``: the episode ended in a terminal state (success, failure), so the value
        after its last step is zero; otherwise (a time limit) the last frame is bootstrapped from.
        ``imitate`` (T,) bool: the actions an imitation term may copy (a demonstration's perturbations
        are transitions to learn values from, not actions to copy); all of them if None.
        """
        steps = len(actions)
        count = steps + 1
        if steps < 1:
            raise ValueError("an episode needs at least one action")
        if count > self.capacity:
            raise ValueError(f"an episode of {count} frames does not fit a buffer of {self.capacity}")
        for key, value in frames.items():
            if len(value) != count:
                raise ValueError(f"field {key!r} has {len(value)} frames, expected {count} (actions + 1)")
        if imitate is not None and len(imitate) != steps:
            raise ValueError(f"imitate has {len(imitate)} marks, expected one per action ({steps})")
        while self.used + count > self.capacity:
            self._drop_oldest()
        slots = (self.cursor + torch.arange(count, device=self.device)) % self.capacity
        for key, storage in self.frames.items():
            storage[slots] = torch.as_tensor(np.asarray(frames[key]), device=self.device).to(storage.dtype)
        returns, discounts, offsets = n_step_targets(
            np.asarray(rewards, dtype=np.float64), terminated, self.n_step, self.gamma
        )
        transition_slots = slots[:steps]
        self.actions[transition_slots] = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=self.device)
        self.returns[transition_slots] = torch.as_tensor(returns, dtype=torch.float32, device=self.device)
        self.discounts[transition_slots] = torch.as_tensor(discounts, dtype=torch.float32, device=self.device)
        self.next_offset[transition_slots] = torch.as_tensor(offsets, device=self.device)
        self.valid[transition_slots] = True
        self.imitate[transition_slots] = (
            True if imitate is None else torch.as_tensor(np.asarray(imitate, dtype=bool), device=self.device)
        )
        self.valid[slots[steps]] = False
        self.episodes.append((self.cursor, count))
        self.cursor = (self.cursor + count) % self.capacity
        self.used += count
        self.transitions += steps
        self._valid_index = None

    def _drop_oldest(self) -> None:
        start, count = self.episodes.popleft()
        slots = (start + torch.arange(count, device=self.device)) % self.capacity
        self.valid[slots] = False
        self.used -= count
        self.transitions -= count - 1

    def stored_slots(self) -> torch.Tensor:
        """The slots of every frame stored, oldest episode first."""
        ranges = [(start + torch.arange(count, device=self.device)) % self.capacity for start, count in self.episodes]
        return torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.long, device=self.device)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict:
        """A batch of n-step transitions: ``obs`` and ``next_obs`` dicts, ``action``, ``return``, ``discount``."""
        if self.transitions == 0:
            raise ValueError("the replay buffer is empty")
        if self._valid_index is None:
            self._valid_index = torch.nonzero(self.valid).squeeze(1)
        choice = torch.randint(len(self._valid_index), (batch_size,), generator=generator, device=generator.device)
        index = self._valid_index[choice.to(self.device)]
        following = (index + self.next_offset[index]) % self.capacity
        return {
            "obs": {key: value[index] for key, value in self.frames.items()},
            "next_obs": {key: value[following] for key, value in self.frames.items()},
            "action": self.actions[index],
            "return": self.returns[index],
            "discount": self.discounts[index],
            "imitate": self.imitate[index],
        }

    # ------------------------------------------------------------ persistence
    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Everything stored, as named tensors (for a safetensors training state); only used slots."""
        tensors = {f"{prefix}.{key}": value for key, value in self.frames.items()}
        tensors |= {
            f"{prefix}.actions": self.actions,
            f"{prefix}.returns": self.returns,
            f"{prefix}.discounts": self.discounts,
            f"{prefix}.next_offset": self.next_offset,
            f"{prefix}.valid": self.valid,
            f"{prefix}.imitate": self.imitate,
        }
        return tensors

    def state_json(self) -> dict:
        return {
            "cursor": self.cursor,
            "used": self.used,
            "transitions": self.transitions,
            "episodes": list(self.episodes),
        }

    def restore(self, tensors: dict[str, torch.Tensor], prefix: str, meta: dict) -> None:
        for key, storage in self.frames.items():
            storage.copy_(tensors[f"{prefix}.{key}"])
        for name in ("actions", "returns", "discounts", "next_offset", "valid"):
            getattr(self, name).copy_(tensors[f"{prefix}.{name}"])
        # Training states saved before the marks existed hold online episodes only: all imitable.
        self.imitate.copy_(tensors.get(f"{prefix}.imitate", torch.ones_like(self.imitate)))
        self.cursor, self.used, self.transitions = meta["cursor"], meta["used"], meta["transitions"]
        self.episodes = deque((int(start), int(count)) for start, count in meta["episodes"])
        self._valid_index = None


def sample_mixed(
    online: ReplayBuffer, demos: ReplayBuffer, batch_size: int, demo_ratio: float, generator: torch.Generator
) -> dict:
    """A batch with ``demo_ratio`` of its transitions from the demonstrations (all of them while the online
    buffer is empty) and the rest from online replay; ``is_demo`` marks the demonstration rows (they come first)."""
    from_demos = round(batch_size * demo_ratio) if len(online) else batch_size
    parts = [demos.sample(from_demos, generator)] if from_demos else []
    if batch_size - from_demos:
        parts.append(online.sample(batch_size - from_demos, generator))
    batch = (
        parts[0]
        if len(parts) == 1
        else {
            key: {name: torch.cat([part[key][name] for part in parts]) for name in value}
            if isinstance(value, dict)
            else torch.cat([part[key] for part in parts])
            for key, value in parts[0].items()
        }
    )
    batch["is_demo"] = torch.arange(batch_size, device=batch["action"].device) < from_demos
    return batch


def n_step_targets(rewards: np.ndarray, terminated: bool, n_step: int, gamma: float):
    """For each step t of an episode: the discounted sum of rewards t .. t+m-1 (m = min(n, T - t)),
    the discount gamma**m to bootstrap from frame t + m (0 if the episode terminated there), and m."""
    steps = len(rewards)
    padded = np.concatenate([rewards, np.zeros(n_step)])
    returns = sum(gamma**k * padded[k : k + steps] for k in range(n_step))
    offsets = np.minimum(n_step, steps - np.arange(steps))
    discounts = gamma**offsets
    if terminated:
        discounts[np.arange(steps) + offsets == steps] = 0.0
    return returns, discounts, offsets
