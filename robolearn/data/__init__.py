"""Datasets: the crash-safe episode store, recording helpers, inspection, replay and interop."""

from robolearn.data.store import DatasetError, DemoStore, Episode, load_episode

__all__ = ["DatasetError", "DemoStore", "Episode", "load_episode"]
