"""Stack: pick up the red cube and set it down, released, on top of the green cube."""

from __future__ import annotations

import numpy as np
from dm_control import mjcf

from robolearn.envs.operator import PickOperator, ScriptedOperator
from robolearn.envs.registry import register_task
from robolearn.envs.task import ASSETS, Physics, Task, attach_free_prop, bounded_distance_reward, yaw_quaternion

CUBE_HALF_SIZE = 0.025
MIN_SEPARATION = 0.08
"""Least distance (m) between the two cubes' centres at the start of an episode."""
XY_TOLERANCE = 0.02
"""Largest horizontal offset (m) of the red cube's centre from the green cube's for success."""
HEIGHT_TOLERANCE = 0.01
"""Largest deviation (m) of the centres' height difference from one cube height for success."""
RESTING_SPEED = 0.05
"""Largest speed (m/s) of the red cube that counts as resting."""


@register_task("stack")
class Stack(Task):
    description = "Pick up the red cube and stack it on the green cube."
    max_steps = 200
    privileged_layout = (
        ("red_cube_position", 3, "m, world frame"),
        ("red_cube_quaternion", 4, "w x y z, world frame"),
        ("green_cube_position", 3, "m, world frame"),
        ("green_cube_quaternion", 4, "w x y z, world frame"),
        ("red_to_green", 3, "m, world frame, green cube centre minus red cube centre"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        attach_free_prop(arena, ASSETS / "cube.xml", "cube_a", rgba=(0.85, 0.15, 0.15, 1))
        attach_free_prop(arena, ASSETS / "cube.xml", "cube_b", rgba=(0.15, 0.7, 0.2, 1))

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        low, high = np.array([-0.12, -0.15]), np.array([0.08, 0.15])
        red = random_state.uniform(low, high)
        green = random_state.uniform(low, high)
        while np.linalg.norm(green - red) < MIN_SEPARATION:
            green = random_state.uniform(low, high)
        for name, xy in (("cube_a/", red), ("cube_b/", green)):
            physics.set_free_pose(name, [*xy, CUBE_HALF_SIZE], yaw_quaternion(random_state.uniform(-np.pi, np.pi)))
        start = random_state.uniform([-0.12, -0.12, 0.15], [0.05, 0.12, 0.25])
        physics.arm.place(physics.data, start, yaw=random_state.uniform(-0.5, 0.5))

    def privileged_state(self, physics: Physics) -> np.ndarray:
        red, green = physics.body_position("cube_a/"), physics.body_position("cube_b/")
        return np.concatenate(
            [red, physics.body_quaternion("cube_a/"), green, physics.body_quaternion("cube_b/"), green - red]
        )

    # ------------------------------------------------------------- predicates
    def on_top(self, physics: Physics) -> bool:
        """Whether the red cube rests on the green one within the success tolerances (held or not)."""
        offset = physics.body_position("cube_a/") - physics.body_position("cube_b/")
        return bool(
            np.linalg.norm(offset[:2]) < XY_TOLERANCE and abs(offset[2] - 2 * CUBE_HALF_SIZE) < HEIGHT_TOLERANCE
        )

    def touching(self, physics: Physics) -> tuple[bool, bool]:
        """Whether each finger touches the red cube."""
        return physics.arm.touching(physics.data, physics.geom_id("cube_a/cube"))

    def reward(self, physics: Physics) -> float:
        """Staged: reach the red cube (to 0.25), grasp and lift it (to 0.5), align it over the green
        cube (to 0.8), set it on top (0.9); success (released on top) is worth 1."""
        red, green = physics.body_position("cube_a/"), physics.body_position("cube_b/")
        reach = 0.25 * bounded_distance_reward(np.linalg.norm(physics.gripper_position() - red), 0.1)
        grasped = all(self.touching(physics))
        lift = np.clip((red[2] - CUBE_HALF_SIZE) / (2 * CUBE_HALF_SIZE + 0.01), 0.0, 1.0)
        grasp = 0.3 + 0.2 * lift if grasped else 0.0
        goal = green + np.array([0.0, 0.0, 2 * CUBE_HALF_SIZE])
        off_table = red[2] - CUBE_HALF_SIZE > 0.01
        align = 0.5 + 0.3 * bounded_distance_reward(np.linalg.norm(goal - red), 0.05) if off_table else 0.0
        place = 0.9 if self.on_top(physics) else 0.0
        return float(max(reach, grasp, align, place))

    def is_success(self, physics: Physics) -> bool:
        if not self.on_top(physics) or any(self.touching(physics)):
            return False
        return bool(np.linalg.norm(physics.body_velocity("cube_a/")) < RESTING_SPEED)

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        carry_height = 3 * CUBE_HALF_SIZE + random_state.uniform(0.04, 0.07)

        def green_top(physics: Physics) -> np.ndarray:
            return physics.body_position("cube_b/") + np.array([0.0, 0.0, 2 * CUBE_HALF_SIZE])

        return PickOperator(random_state, "cube_a/", CUBE_HALF_SIZE, carry_height, place_target=green_top)
