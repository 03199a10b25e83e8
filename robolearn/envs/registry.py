"""The task registry: one decorator, one dict, and ``make``.

``grep -r register_task`` finds every task. Built-in tasks live in
``robolearn/envs/tasks/``; a user's tasks live in their workspace's ``envs/``
folder (one Python file plus MJCF per task) and are found by path:

- ``make("lift")``: a registered task (the workspace ``envs/`` folder of the
  current directory is searched when the name is not built in);
- ``make("envs/my_task.py")`` or ``make("envs/tasks.py:my_task")``: a task file;
- ``make("gym:Reacher-v5")``: any gymnasium env that renders ``rgb_array``;
- ``make("dmc:cartpole-swingup")``: a dm_control suite task.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

TASKS: dict[str, type] = {}
"""Registered task classes by id."""
WORKSPACE_TASKS = Path("envs")
"""Where a user's own task files are looked for, relative to the working directory."""

_T = TypeVar("_T", bound=type)
_loaded_files: dict[Path, list[str]] = {}


def register_task(name: str) -> Callable[[_T], _T]:
    """Class decorator: register a ``Task`` subclass under ``name``."""

    def decorate(cls: _T) -> _T:
        if name in TASKS and TASKS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"task {name!r} is already registered by {TASKS[name].__module__}; choose another name")
        cls.name = name
        TASKS[name] = cls
        return cls

    return decorate


def load_task_file(path: str | Path) -> list[str]:
    """Import a task file and return the ids of the tasks it registered."""
    path = Path(path).resolve()
    if path in _loaded_files:
        return _loaded_files[path]
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    before = set(TASKS)
    module_name = "robolearn_user_task_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    added = sorted(set(TASKS) - before)
    if not added:
        raise ValueError(f"{path} registered no task; decorate a Task subclass with @register_task('name')")
    _loaded_files[path] = added
    return added


def _builtin_tasks() -> None:
    importlib.import_module("robolearn.envs.tasks")


def _workspace_tasks(folder: Path = WORKSPACE_TASKS) -> None:
    if folder.is_dir():
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                load_task_file(path)


def task_names(include_workspace: bool = True) -> list[str]:
    """Ids of the built-in tasks and, optionally, those in the workspace ``envs/`` folder."""
    _builtin_tasks()
    if include_workspace:
        _workspace_tasks()
    return sorted(TASKS)


def resolve_task(task_id: str) -> type:
    """The task class for an id, a file path or ``file.py:name``."""
    _builtin_tasks()
    path, _, name = task_id.partition(":") if ".py" in task_id else ("", "", task_id)
    if path:
        added = load_task_file(path)
        if not name:
            if len(added) != 1:
                raise ValueError(f"{path} registers {added}; pick one with '{path}:<name>'")
            name = added[0]
    if name not in TASKS:
        _workspace_tasks()
    if name not in TASKS:
        raise KeyError(
            f"unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS))}. A task of your own goes "
            f"in {WORKSPACE_TASKS}/<name>.py (see envs/ in the robolearn repository) or is named by path"
        )
    return TASKS[name]


def make(task_id: str, task_kwargs: dict[str, Any] | None = None, **env_kwargs: Any):
    """Build the env for a task id; ``env_kwargs`` go to the env, ``task_kwargs`` to the task."""
    if task_id.startswith("gym:"):
        from robolearn.envs.adapters import GymnasiumAdapter

        return GymnasiumAdapter(task_id.removeprefix("gym:"), **env_kwargs)
    if task_id.startswith("dmc:"):
        from robolearn.envs.adapters import DmControlAdapter

        return DmControlAdapter(task_id.removeprefix("dmc:"), **env_kwargs)
    from robolearn.envs.env import RobolearnEnv

    task = resolve_task(task_id)(**(task_kwargs or {}))
    return RobolearnEnv(task, **env_kwargs)
