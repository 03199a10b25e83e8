"""Tasks, the registry and env adapters."""

from robolearn.envs.env import EVALUATION_SEED_START, RobolearnEnv, evaluation_seeds
from robolearn.envs.registry import TASKS, make, register_task, task_names
from robolearn.envs.spec import Feature, FeatureSpec

__all__ = [
    "EVALUATION_SEED_START",
    "TASKS",
    "Feature",
    "FeatureSpec",
    "RobolearnEnv",
    "evaluation_seeds",
    "make",
    "register_task",
    "task_names",
]
