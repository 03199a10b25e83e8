"""A worked example of a task of your own: lift a blue cylinder.

A task is one Python file plus an MJCF for its props, kept in your workspace's
``envs/`` folder. Register it with the same decorator as the built-in tasks:

    robolearn envs --task lift_cylinder          # found in ./envs by name
    robolearn envs --task envs/lift_cylinder.py  # or by path

Copy this file, rename the task, change the props and the hooks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dm_control import mjcf

from robolearn.envs import register_task
from robolearn.envs.operator import PickOperator, ScriptedOperator
from robolearn.envs.task import Physics, Task, attach_free_prop, bounded_distance_reward

CYLINDER_XML = Path(__file__).with_name("cylinder.xml")
HALF_HEIGHT = 0.03
LIFT_HEIGHT = 0.08


@register_task("lift_cylinder")
class LiftCylinder(Task):
    description = "Grasp the blue cylinder and lift it 8 cm off the table (example user task)."
    max_steps = 100
    privileged_layout = (
        ("cylinder_position", 3, "m, world frame"),
        ("cylinder_to_gripper", 3, "m, world frame, gripper centre minus cylinder centre"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        attach_free_prop(arena, CYLINDER_XML, "cylinder")

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        position = [random_state.uniform(-0.1, 0.06), random_state.uniform(-0.12, 0.12), HALF_HEIGHT]
        physics.set_free_pose("cylinder/", position)
        physics.arm.place(physics.data, random_state.uniform([-0.1, -0.1, 0.15], [0.05, 0.1, 0.22]))

    def privileged_state(self, physics: Physics) -> np.ndarray:
        cylinder = physics.body_position("cylinder/")
        return np.concatenate([cylinder, physics.gripper_position() - cylinder])

    def reward(self, physics: Physics) -> float:
        cylinder = physics.body_position("cylinder/")
        reach = bounded_distance_reward(np.linalg.norm(physics.gripper_position() - cylinder), 0.1)
        return float(0.5 * reach + 0.5 * np.clip((cylinder[2] - HALF_HEIGHT) / LIFT_HEIGHT, 0.0, 1.0))

    def is_success(self, physics: Physics) -> bool:
        return bool(physics.body_position("cylinder/")[2] - HALF_HEIGHT > LIFT_HEIGHT)

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        carry_height = HALF_HEIGHT + LIFT_HEIGHT + random_state.uniform(0.04, 0.08)
        return PickOperator(random_state, "cylinder/", 0.022, carry_height)
