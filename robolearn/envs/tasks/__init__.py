"""The built-in tasks; importing this package registers them (one file per task)."""

from robolearn.envs.tasks import drawer, lift, push, reach, stack  # noqa: F401
