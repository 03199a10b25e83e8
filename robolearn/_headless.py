"""Pick an OpenGL backend that works before MuJoCo is first imported."""

from __future__ import annotations

import os
import sys


def configure_gl() -> None:
    """Use EGL (offscreen) when no display is available and the user chose no backend.

    MuJoCo reads ``MUJOCO_GL`` once, when it is imported, so this must run first. With a
    display, or with ``MUJOCO_GL`` already set (``glfw`` for the live viewer), nothing changes.
    """
    if "MUJOCO_GL" in os.environ:
        return
    if "mujoco" in sys.modules:
        return  # too late to choose; MuJoCo already picked its backend
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
