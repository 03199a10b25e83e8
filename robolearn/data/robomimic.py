"""``robolearn export`` and ``robolearn import``: datasets to and from robomimic's HDF5 layout.

One HDF5 file holds a dataset (robomimic's ``docs/datasets/overview.md``)::

    data/                    attrs: total (steps in all demos), env_args (JSON, below)
        demo_<i>/            attrs: num_samples (T), ep_info (JSON: our episode info)
            actions          (T, A) float32
            states           (T, S) float64   full simulator state before each action
            rewards          (T,)   float32
            dones            (T,)   int64     1 at the last step
            obs/<key>        (T, ...)         observation before each action (images uint8 H x W x 3)
            next_obs/<key>   (T, ...)         observation after each action (unless --no-next-obs)
            successes        (T,)   bool      robolearn's: task success after each action
            final_state      (S,)   float64   robolearn's: the state after the last action
            perturbed        (T,)   bool      robolearn's, after record --perturb only: the steps
                                              that are scripted perturbations, not demonstrations
                                              (robomimic ignores the key and trains on them too)
    robolearn/model_xml      the task's MJCF as bytes, restored as model.xml on import

Observation keys are our feature names with ``/`` replaced by ``_``: ``state``, ``privileged``,
``rgb_front``, ``rgb_wrist`` (in a robomimic config: ``low_dim: ["state"]``, ``rgb:
["rgb_front", "rgb_wrist"]``). ``env_args`` is ``{"env_name": <task id>, "type": "robolearn",
"env_kwargs": <env kwargs>, "robolearn_meta": <the dataset's meta.json>}``: robomimic trains on
the file (its rollouts cannot build our envs: set ``experiment.rollout.enabled = False``), and
importing it back gives the dataset again, array for array.

Files from robomimic itself (no ``robolearn_meta``) are mapped as follows: uint8 image keys
become ``rgb/<camera>`` (``agentview_image`` -> ``rgb/agentview``, ``rgb_front`` -> ``rgb/front``);
``object`` (or ``privileged``) becomes ``privileged``; a ``state`` key, or else every other
vector key in name order, concatenated, becomes ``state`` (its layout names each key);
anything else (depth, point clouds) is left out and listed. ``successes`` are read from the
file or taken as ``rewards >= 1`` (robomimic's tasks reward 1 on success). Such a dataset has
no task: training works, evaluation needs one. With ``--task`` the states are those of a
robolearn task: they are checked against it, and the final states and successes recomputed.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from tqdm import tqdm
from tyro.conf import Positional

from robolearn.data.replay import env_for_dataset
from robolearn.data.rerender import check_new_folder, new_dataset_folder
from robolearn.data.store import (
    FORMAT,
    FORMAT_VERSION,
    DatasetError,
    DemoStore,
    Episode,
    atomic_write_bytes,
    atomic_write_json,
    check_meta,
    dataset_meta,
    library_versions,
    load_episode,
)
from robolearn.envs import make
from robolearn.envs.spec import Feature, FeatureSpec

ENV_TYPE = "robolearn"
"""``env_args["type"]`` of our files; robomimic's own types are integers (1 robosuite, 2 gym, ...)."""
DEMO_PATTERN = re.compile(r"^demo_(\d+)$")


@dataclass
class ExportConfig:
    """Write a dataset as one robomimic HDF5 file (data/demo_i/{actions, states, rewards, dones, obs/*})."""

    dataset: Positional[Path]
    """The dataset folder (demos/<name>)."""
    out: Positional[Path]
    """The HDF5 file to write (e.g. lift.hdf5); it must not exist yet."""
    format: Literal["robomimic"] = "robomimic"
    """The file layout."""
    next_obs: bool = True
    """Also write next_obs/ (robomimic loads it unless train.hdf5_load_next_obs=False); the last one is made from the final state, which needs the dataset's task installed."""


@dataclass
class ImportConfig:
    """Make a robolearn dataset from a robomimic HDF5 file (exported by robolearn, or robomimic's own)."""

    source: Positional[Path]
    """The HDF5 file."""
    out: Path
    """The new dataset folder; it must not exist yet or be empty."""
    task: str | None = None
    """For a file without robolearn metadata: the robolearn task its states come from; without it the dataset has no task (training works, evaluation needs one)."""


def obs_key(name: str) -> str:
    """The robomimic observation key of one of our features: ``rgb/front`` -> ``rgb_front``."""
    return name.replace("/", "_")


# ------------------------------------------------------------------------------------------ export
def export(config: ExportConfig) -> Path:
    """Write ``config.dataset`` to the HDF5 file ``config.out`` and return its path."""
    store = DemoStore(config.dataset)
    out, meta = config.out, store.meta
    if out.exists():
        raise DatasetError(f"{out} exists; choose another file name or delete it first")
    paths = store.episode_paths()
    if not paths:
        raise DatasetError(f"{store.root} holds no episodes; record some first")
    keys = {name: obs_key(name) for name in meta["features"]["observations"]}
    if len(set(keys.values())) != len(keys):
        raise DatasetError(f"{store.meta_path}: feature names {sorted(keys)} collide once '/' becomes '_'")
    env = None
    if config.next_obs:
        try:
            env = env_for_dataset(store)
        except DatasetError as error:
            raise DatasetError(f"{error}; or export without next_obs: --no-next-obs") from error
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with h5py.File(partial, "w") as file:
            data = file.create_group("data")
            total = 0
            for index, path in enumerate(tqdm(paths, desc=f"export {out.name}", unit="episode")):
                episode = load_episode(path, meta)
                _write_demo(data.create_group(f"demo_{index}"), episode, keys, env)
                total += len(episode)
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(
                {"env_name": meta["task"]["id"], "type": ENV_TYPE, "env_kwargs": meta["env"], "robolearn_meta": meta}
            )
            model = store.root / (meta.get("mjcf") or {}).get("file", "model.xml")
            if model.is_file():
                file.create_dataset("robolearn/model_xml", data=np.frombuffer(model.read_bytes(), np.uint8))
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if env is not None:
            env.close()
    print(f"exported {len(paths)} episodes ({total} steps) to {out}")
    print(f"  obs keys: {', '.join(keys.values())}; env_args type {ENV_TYPE!r} (robomimic rollouts: disable them)")
    return out


def _write_demo(group: h5py.Group, episode: Episode, keys: dict[str, str], env) -> None:
    steps = len(episode)
    group.attrs["num_samples"] = steps
    group.attrs["ep_info"] = json.dumps(episode.info)
    dones = np.zeros(steps, np.int64)
    dones[-1] = 1
    group.create_dataset("actions", data=episode.actions)
    group.create_dataset("states", data=episode.states[:-1])
    group.create_dataset("rewards", data=episode.rewards)
    group.create_dataset("dones", data=dones)
    group.create_dataset("successes", data=episode.successes)
    group.create_dataset("final_state", data=episode.states[-1])
    if episode.perturbed is not None:
        group.create_dataset("perturbed", data=episode.perturbed)
    final = env.set_state(episode.states[-1]) if env is not None else None
    for name, values in episode.observations.items():
        group.create_dataset(f"obs/{keys[name]}", data=values)
        if final is not None:
            group.create_dataset(f"next_obs/{keys[name]}", data=np.concatenate([values[1:], final[name][None]]))


# ------------------------------------------------------------------------------------------ import
def import_(config: ImportConfig) -> Path:
    """Write the robolearn dataset ``config.out`` from the HDF5 file ``config.source`` and return it."""
    source = config.source
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    check_new_folder(config.out)  # before reading anything
    try:
        file = h5py.File(source, "r")
    except OSError as error:
        raise DatasetError(f"{source}: not a readable HDF5 file ({error}); export it again") from error
    with file:
        data = file.get("data")
        if not isinstance(data, h5py.Group):
            raise DatasetError(f"{source}: no group 'data'; a robomimic file holds data/demo_0/... (overview.md)")
        demos = sorted((name for name in data if DEMO_PATTERN.match(name)), key=lambda n: int(n[5:]))
        if not demos:
            raise DatasetError(f"{source}: group 'data' holds no demo_<i> groups; there is nothing to import")
        env_args = _env_args(data, source)
        if isinstance(env_args.get("robolearn_meta"), dict):
            if config.task:
                raise ValueError(f"{source} carries its robolearn task and settings; import it without --task")
            importer = _Ours(source, env_args["robolearn_meta"], file)
        else:
            importer = _Foreign(source, data[demos[0]], env_args, config.task)
        try:
            for demo in demos:  # check every demo before writing anything
                importer.check(data[demo], _where(source, data[demo]))
            with new_dataset_folder(config.out) as staging:
                store = importer.create(staging)
                with store:
                    for demo in tqdm(demos, desc=f"import {source.name}", unit="demo"):
                        store.append(importer.episode(data[demo], demo))
                (staging / ".lock").unlink(missing_ok=True)
        finally:
            importer.close()
    task = importer.meta["task"]["id"]
    print(f"imported {len(demos)} demos from {source} into {config.out} (task: {task or 'none'})")
    for note in importer.notes:
        print(f"  note: {note}")
    return config.out


def _env_args(data: h5py.Group, source: Path) -> dict:
    text = data.attrs.get("env_args")
    if text is None:
        return {}
    try:
        env_args = json.loads(text.decode() if isinstance(text, bytes) else str(text))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{source}: data.attrs['env_args'] is not JSON ({error}); repair or remove it") from error
    return env_args if isinstance(env_args, dict) else {}


def _where(source: Path, group: h5py.Group) -> str:
    """How errors name a group: ``<file>: data/demo_3``."""
    return f"{source}: {group.name.lstrip('/')}"


def _read(group: h5py.Group, key: str, where: str, fix: str) -> np.ndarray:
    item = group.get(key)
    if not isinstance(item, h5py.Dataset):
        raise DatasetError(f"{where}: key {key!r} is missing; {fix}")
    return item[()]


def _check_actions(group: h5py.Group, where: str) -> np.ndarray:
    actions = _read(group, "actions", where, "every demo needs its actions (T, A)")
    if actions.ndim != 2 or len(actions) == 0:
        raise DatasetError(f"{where}/actions: shape {actions.shape}, expected (T, A) with T > 0")
    bad = np.flatnonzero(~np.isfinite(actions).all(axis=1))
    if bad.size:
        raise DatasetError(
            f"{where}/actions holds NaN or inf at step {int(bad[0])} ({bad.size} steps in all); fix those "
            f"actions, or delete the demo from the file (h5py: del f['{group.name}'])"
        )
    return actions


class _Ours:
    """A file exported by robolearn: the embedded meta.json and arrays come back unchanged."""

    def __init__(self, source: Path, meta: dict, file: h5py.File) -> None:
        where = f"{source}: data.attrs['env_args']['robolearn_meta']"
        check_meta(meta, where, "export the dataset again")
        self.meta, self.notes = meta, []
        model = file.get("robolearn/model_xml")
        self.model_xml = model[()].tobytes() if isinstance(model, h5py.Dataset) else None
        self.keys = {
            name: obs_key(name)
            for name in meta["features"]["observations"]
            if meta["images"] or not name.startswith("rgb/")
        }

    def check(self, group: h5py.Group, where: str) -> None:
        _check_actions(group, where)
        fix = "the file was changed after `robolearn export`; export the dataset again"
        for key in ("states", "final_state", "rewards", "successes", *(f"obs/{k}" for k in self.keys.values())):
            if not isinstance(group.get(key), h5py.Dataset):
                raise DatasetError(f"{where}: key {key!r} is missing; {fix}")

    def create(self, root: Path) -> DemoStore:
        (root / "episodes").mkdir()
        if self.model_xml is not None:
            atomic_write_bytes(root / "model.xml", lambda file: file.write(self.model_xml))
        atomic_write_json(root / "meta.json", self.meta)
        return DemoStore(root)

    def episode(self, group: h5py.Group, demo: str) -> Episode:
        info = group.attrs.get("ep_info", "{}")
        return Episode(
            actions=group["actions"][()],
            observations={name: group[f"obs/{key}"][()] for name, key in self.keys.items()},
            states=np.concatenate([group["states"][()], group["final_state"][()][None]]),
            rewards=group["rewards"][()],
            successes=group["successes"][()],
            info=json.loads(info.decode() if isinstance(info, bytes) else str(info)),
            perturbed=group["perturbed"][()] if "perturbed" in group else None,
        )

    def close(self) -> None:
        pass


class _Foreign:
    """A file written by robomimic or another tool: observations mapped as the module docstring says."""

    def __init__(self, source: Path, first: h5py.Group, env_args: dict, task: str | None) -> None:
        self.source, self.task, self.notes = source, task, []
        self.env = self.recording_env = None  # with --task: a state-only env, and one with the file's cameras
        obs = first.get("obs")
        if not isinstance(obs, h5py.Group):
            raise DatasetError(f"{_where(source, first)}: key 'obs' is missing; there is nothing to train on")
        self.mapping = _map_observations(obs, self.notes)
        self.shapes = {key: obs[key].shape[1:] for keys in self.mapping.values() for key in keys}
        try:
            self.meta = self._taskless_meta(first, env_args) if task is None else self._task_meta(first)
        except BaseException:
            self.close()
            raise
        self.keys_needed = [key for keys in self.mapping.values() for key in keys]

    # ----- metadata
    def _features(self) -> dict[str, Feature]:
        features = {}
        for name, keys in self.mapping.items():
            if name.startswith("rgb/"):
                features[name] = Feature(self.shapes[keys[0]], "uint8", f"RGB image, robomimic obs/{keys[0]}")
                continue
            layout = tuple((key, int(np.prod(self.shapes[key])), f"robomimic obs/{key}") for key in keys)
            size = sum(entry[1] for entry in layout)
            features[name] = Feature((size,), "float32", f"robomimic obs {', '.join(keys)}", layout=layout)
        return features

    def _taskless_meta(self, first: h5py.Group, env_args: dict) -> dict:
        actions = first.get("actions")
        if not isinstance(actions, h5py.Dataset):
            raise DatasetError(
                f"{_where(self.source, first)}: key 'actions' is missing; every demo needs its actions (T, A)"
            )
        states = first.get("states")
        self.state_size = int(states.shape[1]) if isinstance(states, h5py.Dataset) and states.ndim == 2 else 0
        action = Feature(actions.shape[1:], "float32", "action from the robomimic file")
        spec = FeatureSpec(self._features(), action)
        env_kwargs = env_args.get("env_kwargs") or {}
        self.notes.append("no task: training works; evaluation and replay need one (import again with --task)")
        if self.state_size:
            self.notes.append("robomimic stores no state after the last action: final states are NaN")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": {"id": None, "kwargs": {}},
            "env": {},
            "control_rate": env_kwargs.get("control_freq"),
            "max_steps": None,
            "features": spec.to_json(),
            "cameras": [name.removeprefix("rgb/") for name in self.mapping if name.startswith("rgb/")],
            "images": any(name.startswith("rgb/") for name in self.mapping),
            "state_size": self.state_size,
            "mjcf": None,
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"format": "robomimic", "file": str(self.source), "env_args": env_args},
        }

    def _task_meta(self, first: h5py.Group) -> dict:
        cameras = [name.removeprefix("rgb/") for name in self.mapping if name.startswith("rgb/")]
        sizes = {self.shapes[self.mapping[f"rgb/{camera}"][0]][:2] for camera in cameras}
        if len(sizes) > 1:
            raise DatasetError(f"{self.source}: cameras {cameras} have different sizes {sorted(sizes)}; a task has one")
        height, width = sizes.pop() if sizes else (84, 84)
        self.env_kwargs = {"cameras": tuple(cameras), "image_size": height if height == width else (height, width)}
        try:
            self.env = make(self.task, cameras=())  # for the states: no frames needed
        except (KeyError, FileNotFoundError) as error:
            reason = error.args[0] if error.args else error
            raise DatasetError(
                f"--task {self.task!r} is not installed here ({reason}); put its file in ./envs/ "
                "or name the file (--task path/to/<task>.py)"
            ) from error
        try:
            self.recording_env = make(self.task, **self.env_kwargs)
        except ValueError as error:
            raise DatasetError(
                f"{self.source}: its images come from cameras {cameras}, which task {self.task!r} does not have "
                f"({error}); import it without --task"
            ) from error
        meta = dataset_meta(self.recording_env, self.task, self.env_kwargs, {})
        features = self.recording_env.features.observations
        found = self._features()
        for name, feature in features.items():
            if name not in found or found[name].shape != feature.shape:
                have = ", ".join(f"{n} {f.shape}" for n, f in found.items())
                raise DatasetError(
                    f"{_where(self.source, first)}/obs gives no {name!r} of shape {feature.shape} for task "
                    f"{self.task!r} (mapped: {have}); the file was not recorded with this task: import it without --task"
                )
        self.mapping = {name: self.mapping[name] for name in features}
        self.state_size = meta["state_size"]
        self.notes.append(f"final states and successes recomputed with task {self.task!r}")
        return meta

    # ----- per demo
    def check(self, group: h5py.Group, where: str) -> None:
        steps = len(_check_actions(group, where))
        for key in self.keys_needed:
            item = group.get(f"obs/{key}")
            if not isinstance(item, h5py.Dataset):
                raise DatasetError(
                    f"{where}: key 'obs/{key}' is missing (the first demo has it); every demo needs the same obs"
                )
            if item.shape != (steps, *self.shapes[key]):
                raise DatasetError(f"{where}/obs/{key}: shape {item.shape}, expected {(steps, *self.shapes[key])}")
        rewards = group.get("rewards")
        if rewards is not None and (not isinstance(rewards, h5py.Dataset) or rewards.shape != (steps,)):
            raise DatasetError(f"{where}/rewards: shape {getattr(rewards, 'shape', None)}, expected ({steps},)")
        if self.state_size:
            states = group.get("states")
            if not isinstance(states, h5py.Dataset) or states.shape != (steps, self.state_size):
                found = states.shape if isinstance(states, h5py.Dataset) else "missing"
                fix = "import it without --task" if self.task else "every demo needs states of one size"
                raise DatasetError(f"{where}: key 'states' is {found}, expected ({steps}, {self.state_size}); {fix}")

    def create(self, root: Path) -> DemoStore:
        if self.task is None:
            (root / "episodes").mkdir()
            atomic_write_json(root / "meta.json", self.meta)
            return DemoStore(root)
        return DemoStore.create(root, self.recording_env, self.task, self.env_kwargs)

    def episode(self, group: h5py.Group, demo: str) -> Episode:
        actions = group["actions"][()].astype(np.float32)
        steps = len(actions)
        observations = {}
        for name, keys in self.mapping.items():
            if name.startswith("rgb/"):
                observations[name] = group[f"obs/{keys[0]}"][()]
            else:
                parts = [group[f"obs/{key}"][()].reshape(steps, -1) for key in keys]
                observations[name] = np.concatenate(parts, axis=1).astype(np.float32)
        rewards = group["rewards"][()].astype(np.float32) if "rewards" in group else np.zeros(steps, np.float32)
        states = group["states"][()].astype(np.float64) if self.state_size else np.zeros((steps, 0))
        if self.env is not None:
            states, successes = self._replayed(states, actions)
        else:
            final = np.full((1, states.shape[1]), np.nan)
            states = np.concatenate([states, final])
            successes = group["successes"][()].astype(bool) if "successes" in group else rewards >= 1.0
        info = {
            "seed": None,
            "success": bool(successes.any()),
            "steps": steps,
            "first_success_step": int(np.argmax(successes)) if successes.any() else None,
            "source": f"{self.source.name}:data/{demo}",
        }
        if "ep_info" in group.attrs:
            info["ep_info"] = str(group.attrs["ep_info"])
        return Episode(actions, observations, states, rewards, successes, info)

    def _replayed(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The states with the one after the last action, and success after each action, from the task."""
        successes = []
        for state in states[1:]:
            self.env.set_state(state)
            successes.append(self.env.is_success())
        self.env.set_state(states[-1])
        _, _, _, _, info = self.env.step(actions[-1])
        successes.append(bool(info["is_success"]))
        return np.concatenate([states, self.env.get_state()[None]]), np.array(successes, bool)

    def close(self) -> None:
        for env in (self.env, self.recording_env):
            if env is not None:
                env.close()


def _map_observations(obs: h5py.Group, notes: list[str]) -> dict[str, list[str]]:
    """Our feature name -> the robomimic obs keys it is made of (module docstring)."""
    images, vectors, skipped = {}, [], []
    for key in sorted(obs):
        item = obs[key]
        if not isinstance(item, h5py.Dataset):
            skipped.append(key)
        elif item.dtype == np.uint8 and item.ndim == 4 and item.shape[-1] == 3:
            images[f"rgb/{key.removeprefix('rgb_').removesuffix('_image')}"] = [key]
        elif item.ndim in (1, 2) and np.issubdtype(item.dtype, np.number):
            vectors.append(key)
        else:
            skipped.append(key)
    mapping: dict[str, list[str]] = {}
    privileged = next((key for key in ("privileged", "object") if key in vectors), None)
    state = ["state"] if "state" in vectors else [key for key in vectors if key not in ("privileged", "object")]
    if state:
        mapping["state"] = state
    if privileged:
        mapping["privileged"] = [privileged]
    used = {key for keys in mapping.values() for key in keys}
    skipped += [key for key in vectors if key not in used]
    if skipped:
        notes.append(f"obs keys left out: {', '.join(skipped)}")
    mapping.update(images)
    if not mapping:
        raise DatasetError(f"{obs.file.filename}: {obs.name} holds no image or vector observations to import")
    return mapping
