"""robolearn: record demonstrations, train visuomotor policies and evaluate them in MuJoCo."""

from robolearn._headless import configure_gl

configure_gl()  # must run before mujoco is imported anywhere

from robolearn.envs import EVALUATION_SEED_START, make, register_task, task_names  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EVALUATION_SEED_START", "__version__", "make", "register_task", "task_names"]
