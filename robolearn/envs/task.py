"""What a task is: props composed onto the arena, and lifecycle hooks over named physics.

A task subclasses ``Task`` in one file (plus an MJCF for any prop of its own)
and is registered with ``@register_task``. The env calls, in order:

1. ``build(arena)`` once: attach props and goal markers to the PyMJCF arena;
2. ``initialize_episode(physics, random_state)`` at every reset: place objects
   and the arm from the episode's random generator;
3. ``reward``, ``is_success`` and ``privileged_state`` after every step.

Tasks read the simulator only through named quantities (``physics.body_position
("cube/")``), never through raw indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import mujoco
import numpy as np
from dm_control import mjcf

from robolearn.envs.arm import Arm

if TYPE_CHECKING:
    from robolearn.envs.operator import ScriptedOperator

ASSETS = Path(__file__).parent / "assets"
ARENA_XML = ASSETS / "arena.xml"


@dataclass
class Physics:
    """A compiled model, its data and the bound arm, with named accessors for tasks.

    Names are resolved to indices once and cached: these accessors run every step.
    """

    model: mujoco.MjModel
    data: mujoco.MjData
    arm: Arm
    _ids: dict = field(default_factory=dict, repr=False)

    def _id(self, kind: mujoco.mjtObj, name: str) -> int:
        key = (kind, name)
        index = self._ids.get(key)
        if index is None:
            index = mujoco.mj_name2id(self.model, kind, name)
            if index < 0:
                raise KeyError(f"no {kind.name.removeprefix('mjOBJ_').lower()} named {name!r} in the model")
            self._ids[key] = index
        return index

    def body_position(self, name: str) -> np.ndarray:
        """Position of a body's frame (m, world)."""
        return self.data.xpos[self._id(mujoco.mjtObj.mjOBJ_BODY, name)].copy()

    def body_quaternion(self, name: str) -> np.ndarray:
        """Orientation of a body's frame (w x y z, world)."""
        return self.data.xquat[self._id(mujoco.mjtObj.mjOBJ_BODY, name)].copy()

    def body_velocity(self, name: str) -> np.ndarray:
        """Linear velocity of a free-jointed body's frame (m/s, world)."""
        joint = self.model.body_jntadr[self._id(mujoco.mjtObj.mjOBJ_BODY, name)]
        address = self.model.jnt_dofadr[joint]
        return self.data.qvel[address : address + 3].copy()

    def geom_id(self, name: str) -> int:
        return self._id(mujoco.mjtObj.mjOBJ_GEOM, name)

    def set_free_pose(self, joint: str, position, quaternion=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Place a free-jointed prop at rest: position (m, world) and quaternion (w x y z)."""
        qpos = self.data.joint(joint).qpos
        qpos[:3] = position
        qpos[3:] = quaternion
        self.data.joint(joint).qvel[:] = 0.0

    def set_mocap_position(self, body: str, position) -> None:
        self.data.mocap_pos[self.model.body_mocapid[self._id(mujoco.mjtObj.mjOBJ_BODY, body)]] = position

    def mocap_position(self, body: str) -> np.ndarray:
        return self.data.mocap_pos[self.model.body_mocapid[self._id(mujoco.mjtObj.mjOBJ_BODY, body)]].copy()

    def joint_position(self, name: str) -> np.ndarray:
        """A joint's generalised position (rad or m; 7 values for a free joint)."""
        joint = self._id(mujoco.mjtObj.mjOBJ_JOINT, name)
        address = self.model.jnt_qposadr[joint]
        size = {0: 7, 1: 4}.get(int(self.model.jnt_type[joint]), 1)
        return self.data.qpos[address : address + size].copy()

    def gripper_position(self) -> np.ndarray:
        return self.arm.gripper_position(self.data)


def yaw_quaternion(yaw: float) -> np.ndarray:
    """Quaternion (w x y z) of a rotation by ``yaw`` radians about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def attach_free_prop(arena: mjcf.RootElement, xml: Path, name: str, rgba=None) -> mjcf.Element:
    """Attach the prop model in ``xml`` under the name ``name`` with a free joint.

    Its body is then ``"<name>/"`` in the compiled model and so is its free joint.
    ``rgba`` recolours every geom of the prop.
    """
    prop = mjcf.from_path(str(xml))
    prop.model = name
    if rgba is not None:
        for geom in prop.find_all("geom"):
            geom.rgba = rgba
    frame = arena.worldbody.attach(prop)
    frame.add("freejoint")
    return frame


def attach_fixed_prop(arena: mjcf.RootElement, xml: Path, name: str, position) -> mjcf.Element:
    """Attach the prop model in ``xml`` welded to the table at ``position`` (m, world)."""
    prop = mjcf.from_path(str(xml))
    prop.model = name
    frame = arena.worldbody.attach(prop)
    frame.pos = position
    return frame


def add_goal_marker(arena: mjcf.RootElement, name: str, rgba, size=(0.03, 0.001)) -> None:
    """A flat disc that shows a goal to the cameras; a mocap body so its place is in the state.

    It never collides. Move it with ``physics.set_mocap_position(name, position)``.
    """
    body = arena.worldbody.add("body", name=name, mocap=True)
    body.add("geom", type="cylinder", size=size, rgba=rgba, contype=0, conaffinity=0)


class Task:
    """Base class for robolearn tasks. Subclasses set the class variables and the hooks."""

    name: ClassVar[str] = ""
    """Registry id, e.g. ``"lift"``; set by ``@register_task``."""
    description: ClassVar[str] = ""
    max_steps: ClassVar[int] = 100
    """Episode length at the 20 Hz control rate."""
    privileged_layout: ClassVar[tuple[tuple[str, int, str], ...]] = ()
    """Named slices of ``privileged_state`` (name, size, units and frame)."""

    def build(self, arena: mjcf.RootElement) -> None:
        """Attach this task's props and goal markers to the arena (once, before compiling)."""

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        """Place the arm and props for a new episode. Randomness comes only from ``random_state``."""
        raise NotImplementedError

    def privileged_state(self, physics: Physics) -> np.ndarray:
        """Object and goal state the robot cannot sense directly (float, see ``privileged_layout``)."""
        raise NotImplementedError

    def reward(self, physics: Physics) -> float:
        """Dense shaped reward in [0, 1]; 1 on success."""
        raise NotImplementedError

    def is_success(self, physics: Physics) -> bool:
        raise NotImplementedError

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        """A stochastic scripted controller that solves the task like a careful teleoperator."""
        raise NotImplementedError


def compose(task: Task, extra_cameras: dict[str, dict] | None = None) -> mjcf.RootElement:
    """The PyMJCF model of arena + arm + the task's props."""
    arena = mjcf.from_path(str(ARENA_XML))
    arena.find("site", "robot_base").attach(mjcf.from_path(str(ASSETS / "arm.xml")))
    task.build(arena)
    for name, attributes in (extra_cameras or {}).items():
        arena.worldbody.add("camera", name=name, **attributes)
    return arena


def bounded_distance_reward(distance: float, scale: float) -> float:
    """A smooth reward in (0, 1] that is 1 at distance 0 and about 0.24 at ``scale``."""
    return 1.0 - math.tanh(distance / scale)
