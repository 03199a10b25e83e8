"""The episode store: a dataset is a folder that describes itself and survives crashes.

::

    demos/<name>/
        meta.json                   format version, task, env settings, feature spec, versions
        model.xml                   the compiled task's MJCF (its sha256 is in meta.json)
        episodes/episode_000000.npz one file per finished episode
        quarantine/                 damaged files moved aside by ``verify --repair``

An episode file is an uncompressed ``.npz`` (read without pickle) holding, for T steps:

====================  ==============  ==============================================
key                   shape           meaning
====================  ==============  ==============================================
``actions``           (T, A) float32  the action taken at step t
``obs/<feature>``     (T, ...)        the observation before action t (images uint8)
``states``            (T+1, S) f64    full simulator state before action t, and after the last
``rewards``           (T,) float32    reward after action t
``successes``         (T,) bool       task success after action t
``perturbed``         (T,) bool       optional: action t was a scripted perturbation, kept for exact
                                      replay but not imitated (``robolearn record --perturb``)
``info``              () str          JSON: seed, device, success, length, timing ...
====================  ==============  ==============================================

Every episode is written to a temporary name, flushed, fsynced and renamed, so a crash at
any moment loses at most the episode in progress; numbering is derived from the files on
disk, so resuming never miscounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "robolearn-demos"
FORMAT_VERSION = 1
"""The newest format this robolearn writes; it reads every version up to this one."""
EPISODE_PATTERN = re.compile(r"^episode_(\d{6})\.npz$")
PARTIAL_SUFFIX = ".partial"


class DatasetError(ValueError):
    """A dataset or one of its files cannot be used; the message names the file and the fix."""


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import mujoco

    import robolearn

    try:
        dm_control_version = version("dm-control")
    except PackageNotFoundError:
        dm_control_version = "unknown"
    return {
        "robolearn": robolearn.__version__,
        "mujoco": mujoco.__version__,
        "dm_control": dm_control_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path, write) -> None:
    """Write a file through ``write(file)`` under a temporary name, fsync it, then rename it."""
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    with open(partial, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    _fsync_directory(path.parent)


def jsonable(value):
    """``value`` with tuples as lists, Paths as strings, arrays and tensors as lists and NaN as None."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    return value


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, lambda file: file.write((json.dumps(data, indent=2) + "\n").encode()))


@dataclass
class Episode:
    """One episode in memory; arrays as described in the module docstring."""

    actions: np.ndarray
    observations: dict[str, np.ndarray]
    states: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray
    info: dict[str, Any]
    perturbed: np.ndarray | None = None
    """(T,) bool where action t knocked the arm off course instead of demonstrating; None: none did."""

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(self.successes.any())

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "actions": self.actions,
            "states": self.states,
            "rewards": self.rewards,
            "successes": self.successes,
            "info": np.array(json.dumps(self.info)),
        }
        if self.perturbed is not None:
            arrays["perturbed"] = self.perturbed
        arrays.update({f"obs/{name}": value for name, value in self.observations.items()})
        return arrays

    @property
    def imitate(self) -> np.ndarray:
        """(T,) bool: the steps whose action is a demonstration to imitate (all but perturbations)."""
        if self.perturbed is None:
            return np.ones(len(self), bool)
        return ~self.perturbed.astype(bool)

    def check(self, meta: dict, source: str) -> None:
        """Raise ``DatasetError`` unless the arrays agree with each other and with the metadata."""
        steps = len(self.actions)
        problems = []
        if steps == 0:
            problems.append("it has no steps")
        expected = {"actions": (steps, *meta["features"]["action"]["shape"])}
        expected.update(
            {
                f"obs/{name}": (steps, *feature["shape"])
                for name, feature in meta["features"]["observations"].items()
                if name in self.observations or not name.startswith("rgb/") or meta["images"]
            }
        )
        expected.update({"states": (steps + 1, meta["state_size"]), "rewards": (steps,), "successes": (steps,)})
        if self.perturbed is not None:
            expected["perturbed"] = (steps,)
        arrays = self.arrays()
        for key, shape in expected.items():
            if key not in arrays:
                problems.append(f"key {key!r} is missing")
            elif arrays[key].shape != shape:
                problems.append(f"key {key!r} has shape {arrays[key].shape}, expected {shape}")
        if not np.isfinite(self.actions).all():
            problems.append("key 'actions' holds NaN or inf")
        if problems:
            raise DatasetError(f"{source}: {'; '.join(problems)}")


def save_episode(path: Path, episode: Episode) -> None:
    """Write an episode file atomically (temporary name, fsync, rename)."""
    atomic_write_bytes(path, lambda file: np.savez(file, **episode.arrays()))


def read_arrays(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The named arrays of an episode file (all by default; only those are read), or ``DatasetError``
    naming a damaged file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in (archive.files if keys is None else keys)}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as error:
        raise DatasetError(
            f"{path}: damaged episode file ({type(error).__name__}: {error}); "
            "run `robolearn verify <dataset> --repair` to move it to quarantine/"
        ) from error


def load_episode(path: Path, meta: dict | None = None) -> Episode:
    """Read an episode file; a damaged or inconsistent one raises ``DatasetError`` naming it."""
    arrays = read_arrays(path)
    try:
        episode = Episode(
            actions=arrays["actions"],
            observations={key[4:]: value for key, value in arrays.items() if key.startswith("obs/")},
            states=arrays["states"],
            rewards=arrays["rewards"],
            successes=arrays["successes"],
            info=json.loads(str(arrays["info"])),
            perturbed=arrays.get("perturbed"),
        )
    except KeyError as error:
        raise DatasetError(f"{path}: key {error} is missing; the file is not a robolearn episode") from error
    if meta is not None:
        episode.check(meta, str(path))
    return episode


class DemoStore:
    """A dataset folder: read its metadata and episodes, and (as the one writer) append episodes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.meta_path = self.root / "meta.json"
        self.episode_dir = self.root / "episodes"
        if not self.meta_path.is_file():
            hint = " (it holds no meta.json)" if self.root.is_dir() else " (no such folder)"
            raise DatasetError(f"{self.root} is not a robolearn dataset{hint}; record one with `robolearn record`")
        self.meta = read_meta(self.meta_path)
        self._lock_file = None

    # ------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | Path, env, task_id: str, env_kwargs: dict, task_kwargs: dict | None = None):
        """Open ``root`` for appending, creating it (with metadata) if new.

        An existing dataset is resumed only if it was recorded with the same task and
        settings; anything else is refused, and nothing in it is touched.
        """
        root = Path(root)
        meta = dataset_meta(env, task_id, env_kwargs, task_kwargs or {})
        if (root / "meta.json").is_file():
            store = cls(root)
            store._check_resumable(meta)
            return store
        if root.exists() and any(root.iterdir()):
            raise DatasetError(f"{root} exists and is not a robolearn dataset; choose a new --out folder")
        (root / "episodes").mkdir(parents=True, exist_ok=True)
        xml = getattr(env, "mjcf_xml", None)
        if xml is not None:
            atomic_write_bytes(root / "model.xml", lambda file: file.write(xml.encode()))
        atomic_write_json(root / "meta.json", meta)
        return cls(root)

    def _check_resumable(self, meta: dict) -> None:
        for key in ("task", "env", "control_rate", "features", "images", "state_size"):
            if self.meta.get(key) != meta.get(key):
                raise DatasetError(
                    f"{self.meta_path}: cannot append, '{key}' differs: the dataset has "
                    f"{_short(self.meta.get(key))}, this recording has {_short(meta.get(key))}. "
                    "Record into a new --out folder instead"
                )

    # ----------------------------------------------------------- episodes
    def episode_paths(self) -> list[Path]:
        """Finished episode files in index order."""
        if not self.episode_dir.is_dir():
            return []
        return sorted(p for p in self.episode_dir.iterdir() if EPISODE_PATTERN.match(p.name))

    def __len__(self) -> int:
        return len(self.episode_paths())

    def next_index(self) -> int:
        paths = self.episode_paths()
        return int(EPISODE_PATTERN.match(paths[-1].name).group(1)) + 1 if paths else 0

    def load(self, index: int) -> Episode:
        path = self.episode_dir / f"episode_{index:06d}.npz"
        if not path.is_file():
            raise DatasetError(f"{path}: no such episode; {self.root} holds {len(self)} episodes")
        return load_episode(path, self.meta)

    def episodes(self):
        for path in self.episode_paths():
            yield load_episode(path, self.meta)

    def episode_infos(self) -> list[dict]:
        """The ``info`` of every episode, read without loading the arrays."""
        infos = []
        for path in self.episode_paths():
            with contextlib.suppress(DatasetError, zipfile.BadZipFile, OSError, KeyError, ValueError):
                with np.load(path, allow_pickle=False) as archive:
                    infos.append(json.loads(str(archive["info"])))
        return infos

    # -------------------------------------------------------------- writing
    def __enter__(self) -> DemoStore:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def lock(self, clear_partials: bool = True) -> None:
        """Become the only writer and (by default) delete what a crashed writer left half-written."""
        self._lock_file = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise DatasetError(f"{self.root} is being written by another robolearn process") from error
        for partial in self.episode_dir.glob(f".*{PARTIAL_SUFFIX}") if clear_partials else ():
            partial.unlink()

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def append(self, episode: Episode) -> Path:
        """Write the next episode atomically and return its path."""
        if self._lock_file is None:
            raise RuntimeError("call lock() (or use the store as a context manager) before appending")
        episode.check(self.meta, "episode to append")
        path = self.episode_dir / f"episode_{self.next_index():06d}.npz"
        save_episode(path, episode)
        return path


def dataset_meta(env, task_id: str, env_kwargs: dict, task_kwargs: dict) -> dict:
    """The metadata of a dataset recorded from ``env`` (built with ``make(task_id, **env_kwargs)``)."""
    xml = getattr(env, "mjcf_xml", None)  # adapters of other simulators have none
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": {"id": task_id, "kwargs": task_kwargs},
        "env": {key: list(v) if isinstance(v, tuple) else v for key, v in env_kwargs.items()},
        "control_rate": env.control_rate,
        "max_steps": env.max_steps,
        "features": env.features.to_json(),
        "cameras": list(env.cameras),
        "images": bool(env.cameras),
        "state_size": int(env.get_state().shape[0]),
        "mjcf": {"file": "model.xml", "sha256": hashlib.sha256(xml.encode()).hexdigest()} if xml else None,
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.loads(json.dumps(meta))  # as it will read back from disk (tuples become lists)


def _short(value, limit: int = 160) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_meta(meta: dict, where: str, missing_fix: str) -> None:
    """Raise ``DatasetError`` unless ``meta`` is robolearn metadata of a format this version reads."""
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{where}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format_version {version!r} is newer than this robolearn reads (up to {FORMAT_VERSION}); "
            "upgrade robolearn (pip install -U robolearn)"
        )
    missing = [key for key in ("task", "env", "features", "state_size", "images") if key not in meta]
    if missing:
        raise DatasetError(f"{where}: keys {missing} are missing; {missing_fix}")


def read_meta(path: Path) -> dict:
    """Read and check a dataset's meta.json: format, version and the keys readers rely on."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: unreadable metadata ({error}); restore it from a backup") from error
    check_meta(meta, str(path), "the metadata is incomplete")
    installed = library_versions()
    recorded = meta.get("versions", {})
    for library in ("mujoco", "dm_control"):
        if recorded.get(library) and recorded[library] != installed[library]:
            warnings.warn(
                f"{path.parent} was recorded with {library} {recorded[library]}, this is {installed[library]}: "
                "replayed states and re-rendered images may differ slightly",
                stacklevel=2,
            )
    return meta
