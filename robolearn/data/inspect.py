"""``robolearn info`` and ``robolearn verify``: what a dataset holds, and whether every file is sound."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from robolearn.data.store import EPISODE_PATTERN, PARTIAL_SUFFIX, DatasetError, DemoStore, load_episode


@dataclass
class InfoConfig:
    """Summarise a dataset: episodes, steps, success, lengths, action ranges, cameras, disk size."""

    dataset: Positional[Path]
    """The dataset folder (demos/<name>)."""
    json: bool = False
    """Print the summary as JSON."""


@dataclass
class VerifyConfig:
    """Check every file of a dataset; with --repair, move damaged ones to quarantine/."""

    dataset: Positional[Path]
    """The dataset folder (demos/<name>)."""
    repair: bool = False
    """Move damaged episode files and leftovers of a crashed writer into <dataset>/quarantine/."""


def summary(store: DemoStore) -> dict:
    """Statistics of a dataset, reading every episode once."""
    lengths, successes, seeds, perturbed = [], [], [], 0
    action_low = action_high = None
    for episode in store.episodes():
        lengths.append(len(episode))
        successes.append(episode.success)
        seeds.append(episode.info.get("seed"))
        perturbed += int(len(episode) - episode.imitate.sum())
        low, high = episode.actions.min(axis=0), episode.actions.max(axis=0)
        action_low = low if action_low is None else np.minimum(action_low, low)
        action_high = high if action_high is None else np.maximum(action_high, high)
    meta = store.meta
    image_shapes = {
        name.removeprefix("rgb/"): feature["shape"]
        for name, feature in meta["features"]["observations"].items()
        if name.startswith("rgb/")
    }
    return {
        "dataset": str(store.root),
        "task": meta["task"]["id"],
        "episodes": len(lengths),
        "steps": int(sum(lengths)),
        "perturbed_steps": perturbed,
        "success_rate": float(np.mean(successes)) if successes else None,
        "episode_length": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)}
        if lengths
        else None,
        "action_low": action_low.astype(float).round(3).tolist() if action_low is not None else None,
        "action_high": action_high.astype(float).round(3).tolist() if action_high is not None else None,
        "cameras": image_shapes if meta["images"] else {},
        "images_stored": meta["images"],
        "control_rate": meta.get("control_rate"),
        "seeds": [min(seeds), max(seeds)] if seeds and None not in seeds else None,
        "disk_bytes": sum(path.stat().st_size for path in store.root.rglob("*") if path.is_file()),
        "scene_bytes": sum(path.stat().st_size for path in store.root.glob("scenes/*") if path.is_file()),
        "format_version": meta["format_version"],
        "versions": meta.get("versions", {}),
    }


def info(config: InfoConfig) -> dict:
    result = summary(DemoStore(config.dataset))
    if config.json:
        print(json.dumps(result, indent=2))
        return result
    length = result["episode_length"] or {}
    scenes = (
        f", of which {result['scene_bytes'] / 2**20:.1f} MiB are random scenes cached by `train --scenes` "
        "(scenes/, safe to delete)"
        if result["scene_bytes"]
        else ""
    )
    rows = [
        ("dataset", result["dataset"]),
        ("task", result["task"]),
        ("episodes", result["episodes"]),
        ("steps", f"{result['steps']} ({result['steps'] / (result['control_rate'] or 1):.0f} s of control)"),
        *(
            [("perturbed steps", f"{result['perturbed_steps']} (scripted perturbations, not imitated)")]
            if result["perturbed_steps"]
            else []
        ),
        ("success rate", f"{result['success_rate']:.1%}" if result["success_rate"] is not None else "-"),
        ("episode length", f"min {length.get('min')}, mean {length.get('mean', 0):.1f}, max {length.get('max')}"),
        ("action low", result["action_low"]),
        ("action high", result["action_high"]),
        (
            "cameras",
            ", ".join(f"{name} {shape[1]}x{shape[0]}" for name, shape in result["cameras"].items())
            or "none stored (render them with `robolearn render`)",
        ),
        ("seeds", result["seeds"]),
        ("disk size", f"{result['disk_bytes'] / 2**20:.1f} MiB" + scenes),
        ("versions", ", ".join(f"{k} {v}" for k, v in result["versions"].items())),
    ]
    for name, value in rows:
        print(f"{name:>15}: {value}")
    return result


def check_files(store: DemoStore) -> tuple[list[tuple[Path, str]], list[str]]:
    """Damaged or stray files with the reason, and notes about the dataset as a whole."""
    damaged: list[tuple[Path, str]] = []
    notes: list[str] = []
    mjcf = store.meta.get("mjcf")
    if mjcf:
        model = store.root / mjcf["file"]
        if not model.is_file():
            notes.append(f"{model} is missing (replay rebuilds the task from its id)")
        elif hashlib.sha256(model.read_bytes()).hexdigest() != mjcf["sha256"]:
            notes.append(f"{model} does not match the sha256 in meta.json")
    indices = []
    for path in sorted(store.episode_dir.iterdir()) if store.episode_dir.is_dir() else []:
        match = EPISODE_PATTERN.match(path.name)
        if path.name.endswith(PARTIAL_SUFFIX):
            damaged.append((path, "half-written by a recorder that stopped; never part of the dataset"))
            continue
        if match is None:
            damaged.append((path, "not an episode file name (episode_NNNNNN.npz)"))
            continue
        indices.append(int(match.group(1)))
        try:
            load_episode(path, store.meta)
        except DatasetError as error:
            damaged.append((path, str(error).removeprefix(f"{path}: ")))
    missing = sorted(set(range(max(indices) + 1)) - set(indices)) if indices else []
    if missing:
        notes.append(f"episode numbers {missing} are absent (quarantined earlier or removed by hand)")
    return damaged, notes


def verify(config: VerifyConfig) -> int:
    """Report every damaged file; with ``repair`` move them to quarantine/. Exit status 1 if damage remains."""
    store = DemoStore(config.dataset)
    damaged, notes = check_files(store)
    total = len(store)
    for note in notes:
        print(f"note: {note}")
    for path, reason in damaged:
        print(f"damaged: {path.name}: {reason}")
    if damaged and config.repair:
        store.lock(clear_partials=False)  # no recorder may write while files move
        try:
            quarantine = store.root / "quarantine"
            quarantine.mkdir(exist_ok=True)
            for path, _ in damaged:
                shutil.move(str(path), quarantine / path.name)
        finally:
            store.unlock()
        print(f"moved {len(damaged)} file(s) to {quarantine}; the other episodes are untouched")
    healthy = total - sum(1 for path, _ in damaged if EPISODE_PATTERN.match(path.name))
    print(f"{healthy}/{total} episodes sound" + ("" if damaged else "; no damaged files"))
    if damaged and not config.repair:
        print("run again with --repair to move the damaged files to quarantine/", file=sys.stderr)
        return 1
    return 0
