"""Training batches from a dataset: every frame loaded once as uint8 arrays, then sampled by index.

No video decoding anywhere: episodes store raw frames, so loading is a read. A
dataset that fits in memory is loaded once into tensors on the training device
(the GPU when there is one) and batches are gathered there by index, so the data
pipeline costs almost nothing per step. Each sample is an observation window of
``history`` steps ending at t (padded with the episode's first step) and the
actions t .. t + chunk - 1 (padded with the last action, masked out).
"""

from __future__ import annotations

import numpy as np
import torch

from robolearn.data.store import DatasetError, DemoStore


def split_episodes(count: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and validation episode indices: a seeded split by episode, never by step."""
    order = np.random.default_rng(seed).permutation(count)
    validation = int(round(count * validation_fraction)) if count > 1 else 0
    validation = min(max(validation, 1 if validation_fraction > 0 and count > 1 else 0), count - 1)
    return sorted(order[validation:].tolist()), sorted(order[:validation].tolist())


class EpisodeBatches:
    """The chosen episodes of a dataset as tensors, sampled into (history, chunk) windows."""

    def __init__(
        self,
        store: DemoStore,
        episodes: list[int],
        keys: tuple[str, ...],
        history: int,
        chunk: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if not episodes:
            raise DatasetError(f"{store.root}: no episodes to train on")
        self.device = torch.device(device)
        self.keys = keys
        columns: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        actions, imitate, starts, ends = [], [], [], []
        offset = 0
        for index in episodes:
            episode = store.load(index)
            missing = [key for key in keys if key not in episode.observations]
            if missing:
                raise DatasetError(
                    f"{store.root}: episode {index} has no {missing}; the policy needs {list(keys)}. "
                    "Render missing cameras with `robolearn render`"
                )
            for key in keys:
                columns[key].append(episode.observations[key])
            actions.append(episode.actions)
            imitate.append(episode.imitate)
            starts.append(np.full(len(episode), offset))
            ends.append(np.full(len(episode), offset + len(episode) - 1))
            offset += len(episode)
        self.size = offset
        self.observations = {
            key: torch.from_numpy(np.concatenate(values)).to(self.device) for key, values in columns.items()
        }
        self.actions = torch.from_numpy(np.concatenate(actions)).float().to(self.device)
        start = torch.from_numpy(np.concatenate(starts)).to(self.device)
        end = torch.from_numpy(np.concatenate(ends)).to(self.device)
        steps = torch.arange(self.size, device=self.device)
        # Index tables: row i holds the observation and action indices of sample i.
        back = torch.arange(-history + 1, 1, device=self.device)
        self.observation_index = torch.maximum(steps[:, None] + back, start[:, None])
        ahead = steps[:, None] + torch.arange(chunk, device=self.device)
        self.action_index = torch.minimum(ahead, end[:, None])
        # Past the episode's end, and scripted perturbations (recorded, not demonstrated), are not imitated.
        demonstrated = torch.from_numpy(np.concatenate(imitate)).to(self.device)
        self.action_mask = ((ahead <= end[:, None]) & demonstrated[self.action_index]).float()

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.observations.values()) + self.actions.numel() * 4

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples ``indices`` as a batch: ``obs/<key>`` (B, history, ...), ``actions`` (B, chunk, A), ``action_mask``."""
        observation_index = self.observation_index[indices]
        batch = {f"obs/{key}": values[observation_index] for key, values in self.observations.items()}
        batch["actions"] = self.actions[self.action_index[indices]]
        batch["action_mask"] = self.action_mask[indices]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        indices = torch.randint(0, self.size, (batch_size,), generator=generator).to(self.device)
        return self.batch(indices)

    def iterate(self, batch_size: int):
        """Every sample once, in order (for validation)."""
        for begin in range(0, self.size, batch_size):
            yield self.batch(torch.arange(begin, min(begin + batch_size, self.size), device=self.device))


def estimated_bytes(store: DemoStore, keys: tuple[str, ...]) -> int:
    """Memory the chosen observation keys and the actions of the whole dataset need, from the metadata."""
    features = store.meta["features"]["observations"]
    per_step = sum(int(np.prod(features[key]["shape"])) * np.dtype(features[key]["dtype"]).itemsize for key in keys)
    per_step += int(np.prod(store.meta["features"]["action"]["shape"])) * 4
    steps = sum(info.get("steps", 0) for info in store.episode_infos())
    return per_step * steps


def available_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


class StreamingBatches(torch.utils.data.IterableDataset):
    """For datasets larger than memory: worker processes load random episodes and cut windows from them.

    Each loaded episode yields ``samples_per_episode`` windows, so file reads are amortised.
    Batches have the same layout as ``EpisodeBatches.batch``; the order depends on worker
    timing, so a resumed run is not bit-identical to an uninterrupted one.
    """

    def __init__(
        self,
        store: DemoStore,
        episodes: list[int],
        keys,
        history: int,
        chunk: int,
        seed: int,
        samples_per_episode: int = 16,
    ) -> None:
        super().__init__()
        self.root, self.episodes, self.keys = store.root, episodes, keys
        self.history, self.chunk, self.seed, self.samples_per_episode = history, chunk, seed, samples_per_episode

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker])
        store = DemoStore(self.root)
        while True:
            episode = store.load(int(rng.choice(self.episodes)))
            length = len(episode)
            for t in rng.integers(0, length, self.samples_per_episode):
                observation_index = np.maximum(np.arange(t - self.history + 1, t + 1), 0)
                ahead = t + np.arange(self.chunk)
                action_index = np.minimum(ahead, length - 1)
                sample = {f"obs/{key}": episode.observations[key][observation_index] for key in self.keys}
                sample["actions"] = episode.actions[action_index].astype(np.float32)
                sample["action_mask"] = ((ahead < length) & episode.imitate[action_index]).astype(np.float32)
                yield sample

    def loader(self, batch_size: int, workers: int, device: torch.device):
        """An endless iterator of batches on ``device``."""
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
            multiprocessing_context="spawn" if workers > 0 else None,
        )
        for batch in loader:
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}
