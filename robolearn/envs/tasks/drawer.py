"""Drawer: grasp the handle of a drawer in a small cabinet and pull the drawer open 10 cm.

The cabinet (``assets/drawer.xml``) stands on the table with its open front towards
the robot; the drawer slides out along -x. Its place varies a little from episode to
episode. The hand turns a quarter turn so the fingers close along x, straddles the
handle bar and closes on it, then pulls.
"""

from __future__ import annotations

import numpy as np
from dm_control import mjcf

from robolearn.envs.operator import CLOSED, ScriptedOperator, wrap_angle
from robolearn.envs.registry import register_task
from robolearn.envs.task import ASSETS, Physics, Task, attach_fixed_prop, bounded_distance_reward

OPEN_DISTANCE = 0.10
"""Metres the drawer must be pulled out for success."""
CABINET_POSITION = np.array([0.15, 0.0, 0.0])
"""Nominal place (m, world) of the cabinet's base centre; the closed handle is 13.5 cm in front of it."""
CABINET_JITTER = np.array([0.03, 0.12])
"""Largest random shift (m) of the cabinet in x and y."""
HANDLE_RADIUS = 0.007
STRADDLE = 0.2
"""Gripper command that opens the fingers just enough to straddle the handle bar (1.6 cm per finger)
without the outer finger touching the drawer front."""


@register_task("drawer")
class Drawer(Task):
    description = "Pull the drawer of the small cabinet open by 10 cm."
    max_steps = 120
    privileged_layout = (
        ("drawer_opening", 1, "m, how far the drawer is pulled out (0 = closed)"),
        ("handle_position", 3, "m, world frame, centre of the handle bar"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        frame = attach_fixed_prop(arena, ASSETS / "drawer.xml", "cabinet", CABINET_POSITION)
        # A mocap body stays put like a welded one, but its place is part of the saved state, so
        # the per-episode cabinet position replays exactly from a state.
        frame.mocap = True

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        shift = random_state.uniform(-CABINET_JITTER, CABINET_JITTER)
        physics.set_mocap_position("cabinet/", CABINET_POSITION + np.array([shift[0], shift[1], 0.0]))
        physics.data.joint("cabinet/slide").qpos[:] = 0.0
        physics.data.joint("cabinet/slide").qvel[:] = 0.0
        start = random_state.uniform([-0.12, -0.12, 0.15], [0.05, 0.12, 0.25])
        physics.arm.place(physics.data, start, yaw=random_state.uniform(-0.5, 0.5))

    def privileged_state(self, physics: Physics) -> np.ndarray:
        return np.concatenate([physics.joint_position("cabinet/slide"), physics.body_position("cabinet/handle")])

    def reward(self, physics: Physics) -> float:
        reach = bounded_distance_reward(
            np.linalg.norm(physics.gripper_position() - physics.body_position("cabinet/handle")), 0.1
        )
        opening = np.clip(physics.joint_position("cabinet/slide")[0] / OPEN_DISTANCE, 0.0, 1.0)
        return float(0.3 * reach + 0.7 * opening)

    def is_success(self, physics: Physics) -> bool:
        return bool(physics.joint_position("cabinet/slide")[0] >= OPEN_DISTANCE)

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        return DrawerOperator(random_state)


class DrawerOperator(ScriptedOperator):
    """Straddle the handle bar with the fingers across it, close, pull along -x, let go.

    Phases: via point, approach (above the handle, hand turned so the fingers close along
    x), descend, close, pull, release, retreat. Losing the handle while pulling opens the
    hand, rises and starts over.
    """

    def __init__(self, random_state: np.random.Generator) -> None:
        super().__init__(random_state)
        self.target_opening = float(random_state.uniform(0.12, 0.15))
        self.grip_height = float(random_state.uniform(0.0, 0.006))
        """Metres above the bar's centre where the gripper centre closes."""
        self.hover = float(random_state.uniform(0.06, 0.09))
        self.phase = "start"
        self.yaw = None
        self.via = None
        self.counter = 0

    def act(self, physics: Physics) -> np.ndarray:
        gripper = physics.gripper_position()
        handle = physics.body_position("cabinet/handle")
        opening = physics.joint_position("cabinet/slide")[0]
        hand_yaw = physics.arm.yaw(physics.data)
        if self.yaw is None:  # either quarter turn closes the fingers along x; take the nearer one
            self.yaw = np.pi / 2 if hand_yaw >= 0 else -np.pi / 2
        grasp = handle + np.array([0.0, 0.0, self.grip_height])
        if self.phase == "start":
            self.via = self.via_point(gripper, handle + np.array([0.0, 0.0, self.hover]))
            self.phase = "via"
        if self.phase == "via":
            if np.linalg.norm(self.via - gripper) < 0.03:
                self.phase = "approach"
            return self.move(physics, self.via, self.yaw, STRADDLE)
        if self.phase == "approach":
            target = np.array([grasp[0], grasp[1], max(gripper[2], handle[2] + 0.06)])
            yaw_error = abs(wrap_angle(self.yaw - hand_yaw))
            if np.linalg.norm(target[:2] - gripper[:2]) < 0.006 and yaw_error < 0.08:
                self.phase = "descend"
            return self.move(physics, target, self.yaw, STRADDLE, precise=True)
        if self.phase == "descend":
            if np.linalg.norm(grasp[:2] - gripper[:2]) > 0.012:
                self.phase = "approach"
            elif gripper[2] - grasp[2] < 0.005:
                self.phase, self.counter = "close", int(self.rng.integers(4, 7))
            return self.move(physics, grasp, self.yaw, STRADDLE, precise=True)
        if self.phase == "close":
            self.counter -= 1
            if self.counter <= 0:
                self.phase = "pull"
            return self.move(physics, gripper, self.yaw, CLOSED, precise=True) * np.array([0, 0, 0, 0, 1], np.float32)
        if self.phase == "pull":
            if self._lost_grip(physics, gripper, grasp):
                self.phase = "retry"
            elif opening >= self.target_opening:
                self.phase, self.counter = "release", int(self.rng.integers(3, 6))
            else:
                target = grasp - np.array([min(0.06, self.target_opening - opening + 0.01), 0.0, 0.0])
                return self.move(physics, target, self.yaw, CLOSED)
        if self.phase == "retry":
            if physics.arm.gripper_opening(physics.data) > 0.02 and gripper[2] > handle[2] + 0.04:
                self.phase = "start"
            return self.move(physics, gripper + np.array([0.0, 0.0, 0.03]), self.yaw, STRADDLE)
        if self.phase == "release":
            self.counter -= 1
            if self.counter <= 0:
                self.phase = "retreat"
            return self.move(physics, gripper, self.yaw, STRADDLE) * np.array([0, 0, 0, 0, 1], np.float32)
        # retreat: back off towards the robot and up, then hold still
        target = np.array([handle[0] - 0.03, handle[1], handle[2] + 0.1])
        return self.move(physics, target, self.yaw, STRADDLE)

    def _lost_grip(self, physics: Physics, gripper: np.ndarray, grasp: np.ndarray) -> bool:
        closed_on_nothing = physics.arm.gripper_opening(physics.data) < HANDLE_RADIUS
        slipped = np.linalg.norm(grasp - gripper) > 0.025
        return closed_on_nothing or slipped
