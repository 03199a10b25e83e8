"""Reach: move the gripper centre into a small green sphere floating above the table."""

from __future__ import annotations

import numpy as np
from dm_control import mjcf

from robolearn.envs.arm import WORKSPACE_HIGH, WORKSPACE_LOW
from robolearn.envs.operator import ScriptedOperator
from robolearn.envs.registry import register_task
from robolearn.envs.task import Physics, Task, bounded_distance_reward

GOAL_LOW = np.array([-0.15, -0.18, 0.05])
GOAL_HIGH = np.array([0.09, 0.18, 0.25])
"""Box (m, world frame) the goal point is sampled in; inside the arm's workspace."""
SUCCESS_DISTANCE = 0.02
"""Metres between the gripper centre and the goal for success."""
GOAL_RADIUS = SUCCESS_DISTANCE
"""Radius (m) of the goal sphere: success is the gripper centre inside it. It never collides."""
MIN_START_DISTANCE = 0.1
"""The goal is sampled at least this far (m) from the gripper's starting place."""


@register_task("reach")
class Reach(Task):
    description = "Move the gripper centre into the green sphere floating above the table."
    max_steps = 60
    privileged_layout = (
        ("goal_position", 3, "m, world frame"),
        ("goal_to_gripper", 3, "m, world frame, gripper centre minus goal"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        body = arena.worldbody.add("body", name="goal", mocap=True)
        body.add("geom", type="sphere", size=[GOAL_RADIUS], rgba=(0.1, 0.95, 0.2, 1), contype=0, conaffinity=0)

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        start = random_state.uniform([-0.12, -0.12, 0.15], [0.05, 0.12, 0.25])
        physics.arm.place(physics.data, start, yaw=random_state.uniform(-0.5, 0.5))
        goal = random_state.uniform(GOAL_LOW, GOAL_HIGH)
        while np.linalg.norm(goal - start) < MIN_START_DISTANCE:
            goal = random_state.uniform(GOAL_LOW, GOAL_HIGH)
        physics.set_mocap_position("goal", goal)

    def privileged_state(self, physics: Physics) -> np.ndarray:
        goal = physics.mocap_position("goal")
        return np.concatenate([goal, physics.gripper_position() - goal])

    def _distance(self, physics: Physics) -> float:
        return float(np.linalg.norm(physics.gripper_position() - physics.mocap_position("goal")))

    def reward(self, physics: Physics) -> float:
        return bounded_distance_reward(self._distance(physics), 0.1)

    def is_success(self, physics: Physics) -> bool:
        return self._distance(physics) < SUCCESS_DISTANCE

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        return ReachOperator(random_state)


class ReachOperator(ScriptedOperator):
    """Reach the goal through a random via point, slowing down near it; then hold still there.

    The gripper command is drawn once per episode (it plays no part in the task), and the
    hand keeps its yaw.
    """

    def __init__(self, random_state: np.random.Generator, goal: str = "goal") -> None:
        super().__init__(random_state)
        self.goal = goal
        self.gripper = float(random_state.uniform(-1.0, 1.0))
        self.precise_radius = float(random_state.uniform(0.04, 0.07))
        self.phase = "start"
        self.via = None

    def act(self, physics: Physics) -> np.ndarray:
        gripper = physics.gripper_position()
        goal = physics.mocap_position(self.goal)
        yaw = physics.arm.yaw(physics.data)
        if self.phase == "start":
            self.via = np.clip(self.via_point(gripper, goal, spread=0.06), WORKSPACE_LOW, WORKSPACE_HIGH)
            self.phase = "via"
        if self.phase == "via":
            if np.linalg.norm(self.via - gripper) < 0.03:
                self.phase = "goal"
            return self.move(physics, self.via, yaw, self.gripper)
        precise = np.linalg.norm(goal - gripper) < self.precise_radius
        return self.move(physics, goal, yaw, self.gripper, precise=precise)
