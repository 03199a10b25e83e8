"""Lift: grasp the red cube and raise it at least 8 cm above the table."""

from __future__ import annotations

import math

import numpy as np
from dm_control import mjcf

from robolearn.envs.operator import PickOperator, ScriptedOperator
from robolearn.envs.registry import register_task
from robolearn.envs.task import ASSETS, Physics, Task, attach_free_prop, bounded_distance_reward, yaw_quaternion

CUBE_HALF_SIZE = 0.025
LIFT_HEIGHT = 0.08
"""Metres the cube's bottom must be above the table for success."""


@register_task("lift")
class Lift(Task):
    description = "Grasp the red cube and lift it 8 cm off the table."
    max_steps = 100
    privileged_layout = (
        ("cube_position", 3, "m, world frame"),
        ("cube_quaternion", 4, "w x y z, world frame"),
        ("cube_to_gripper", 3, "m, world frame, gripper centre minus cube centre"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        attach_free_prop(arena, ASSETS / "cube.xml", "cube", rgba=(0.85, 0.15, 0.15, 1))

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        position = [random_state.uniform(-0.12, 0.08), random_state.uniform(-0.15, 0.15), CUBE_HALF_SIZE]
        physics.set_free_pose("cube/", position, yaw_quaternion(random_state.uniform(-np.pi, np.pi)))
        start = random_state.uniform([-0.12, -0.12, 0.15], [0.05, 0.12, 0.25])
        physics.arm.place(physics.data, start, yaw=random_state.uniform(-0.5, 0.5))

    def privileged_state(self, physics: Physics) -> np.ndarray:
        cube = physics.body_position("cube/")
        return np.concatenate([cube, physics.body_quaternion("cube/"), physics.gripper_position() - cube])

    def reward(self, physics: Physics) -> float:
        cube = physics.body_position("cube/")
        reach = bounded_distance_reward(math.dist(physics.gripper_position(), cube), 0.1)
        height = min(max((cube[2] - CUBE_HALF_SIZE) / LIFT_HEIGHT, 0.0), 1.0)
        return float(0.5 * reach + 0.5 * height)

    def is_success(self, physics: Physics) -> bool:
        return bool(physics.body_position("cube/")[2] - CUBE_HALF_SIZE > LIFT_HEIGHT)

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        carry_height = CUBE_HALF_SIZE + LIFT_HEIGHT + random_state.uniform(0.04, 0.08)
        return PickOperator(random_state, "cube/", CUBE_HALF_SIZE, carry_height)
