"""The built-in tasks; importing this package registers them."""

from robolearn.envs.tasks import lift  # noqa: F401
