import os

os.environ.setdefault("MUJOCO_GL", "egl")

import robolearn  # noqa: E402,F401  (chooses the GL backend before mujoco is imported)
