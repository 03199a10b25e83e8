"""Push: push the red cube, without grasping it, onto the green disc on the table."""

from __future__ import annotations

import numpy as np
from dm_control import mjcf

from robolearn.envs.arm import WORKSPACE_HIGH, WORKSPACE_LOW
from robolearn.envs.operator import CLOSED, ScriptedOperator
from robolearn.envs.registry import register_task
from robolearn.envs.task import (
    ASSETS,
    Physics,
    Task,
    add_goal_marker,
    attach_free_prop,
    bounded_distance_reward,
    yaw_quaternion,
)

CUBE_HALF_SIZE = 0.025
OBJECT_LOW = np.array([-0.12, -0.15])
OBJECT_HIGH = np.array([0.08, 0.15])
"""Region (m, world xy) the cube and the goal are sampled in."""
GOAL_DISTANCE = (0.10, 0.20)
"""Range (m) of the goal's distance from the cube's starting place."""
GOAL_HEIGHT = 0.001
SUCCESS_DISTANCE = 0.03
"""Metres between the cube centre and the goal centre, in xy, for success."""
APPROACH_CLEARANCE = 0.09
"""The spot this far (m) behind the cube, opposite the goal, is kept inside the workspace."""


@register_task("push")
class Push(Task):
    description = "Push the red cube onto the green disc; the gripper stays closed, no grasping."
    max_steps = 150
    privileged_layout = (
        ("cube_position", 3, "m, world frame"),
        ("cube_quaternion", 4, "w x y z, world frame"),
        ("goal_position", 3, "m, world frame, centre of the goal disc"),
        ("cube_to_goal", 3, "m, world frame, goal minus cube centre"),
    )

    def build(self, arena: mjcf.RootElement) -> None:
        attach_free_prop(arena, ASSETS / "cube.xml", "cube", rgba=(0.85, 0.15, 0.15, 1))
        add_goal_marker(arena, "goal", rgba=(0.1, 0.7, 0.2, 1), size=(0.035, 0.001))

    def initialize_episode(self, physics: Physics, random_state: np.random.Generator) -> None:
        while True:
            cube = random_state.uniform(OBJECT_LOW, OBJECT_HIGH)
            angle = random_state.uniform(-np.pi, np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            goal = cube + random_state.uniform(*GOAL_DISTANCE) * direction
            behind = cube - APPROACH_CLEARANCE * direction
            inside = np.all(goal >= OBJECT_LOW) and np.all(goal <= OBJECT_HIGH)
            reachable = np.all(behind >= WORKSPACE_LOW[:2]) and np.all(behind <= WORKSPACE_HIGH[:2])
            if inside and reachable:
                break
        physics.set_free_pose(
            "cube/", [cube[0], cube[1], CUBE_HALF_SIZE], yaw_quaternion(random_state.uniform(-np.pi, np.pi))
        )
        physics.set_mocap_position("goal", [goal[0], goal[1], GOAL_HEIGHT])
        start = random_state.uniform([-0.12, -0.12, 0.15], [0.05, 0.12, 0.25])
        physics.arm.place(physics.data, start, yaw=random_state.uniform(-0.5, 0.5), opening=0.0)

    def privileged_state(self, physics: Physics) -> np.ndarray:
        cube = physics.body_position("cube/")
        goal = physics.mocap_position("goal")
        return np.concatenate([cube, physics.body_quaternion("cube/"), goal, goal - cube])

    def _cube_to_goal(self, physics: Physics) -> float:
        cube = physics.body_position("cube/")
        return float(np.linalg.norm((physics.mocap_position("goal") - cube)[:2]))

    def reward(self, physics: Physics) -> float:
        cube = physics.body_position("cube/")
        reach = bounded_distance_reward(np.linalg.norm(physics.gripper_position() - cube), 0.1)
        place = bounded_distance_reward(self._cube_to_goal(physics), 0.1)
        return float(0.3 * reach + 0.7 * place)

    def is_success(self, physics: Physics) -> bool:
        on_table = physics.body_position("cube/")[2] < CUBE_HALF_SIZE + 0.01
        return bool(on_table and self._cube_to_goal(physics) < SUCCESS_DISTANCE)

    def scripted_operator(self, random_state: np.random.Generator) -> ScriptedOperator:
        return PushOperator(random_state, "cube/", "goal", CUBE_HALF_SIZE)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


class PushOperator(ScriptedOperator):
    """Push a cube along the line from it to a goal with the closed fingers.

    Phases: via (a random point, high), align (above a spot behind the cube, opposite the
    goal), lower (straight down to pushing height), push (slowly along the cube-to-goal
    line, fingers slightly off-centre to steer the cube back onto it), then done (back off,
    rise and hold). If the cube drifts off the line, or slips off the fingers, they back
    off and rise (realign) and go behind it again; so they do if it leaves the goal.
    """

    PUSHER_HALF_WIDTH = 0.012
    """Half the width (m) of the closed finger pair."""
    STEER_GAIN = 0.5
    """Fingers' sideways offset from the cube centre per metre the cube is off the push line
    (towards the line)."""
    STEER_LIMIT = 0.01
    """Largest sideways offset (m) of the fingers from the cube centre while pushing."""
    OFF_LINE = 0.02
    """Metres the cube may drift off the push line before the fingers realign behind it."""

    def __init__(self, random_state: np.random.Generator, cube: str, goal: str, cube_half_size: float) -> None:
        super().__init__(random_state)
        self.cube = cube
        self.goal = goal
        self.cube_half_size = cube_half_size
        self.contact = cube_half_size + self.PUSHER_HALF_WIDTH
        """Gripper-centre distance (m) behind the cube centre where the fingers touch its face."""
        self.standoff = self.contact + float(random_state.uniform(0.02, 0.03))
        self.hover = 2 * cube_half_size + float(random_state.uniform(0.035, 0.06))
        self.push_height = float(random_state.uniform(0.02, 0.025))
        self.push_step = float(random_state.uniform(0.004, 0.008))
        """Metres the fingers advance per step while pushing; slow enough that the cube does not slide on."""
        self.stop_distance = float(random_state.uniform(-0.004, 0.006))
        """Where (m, along the push line, short of the goal) the pushing stops."""
        self.phase = "start"
        self.via = None
        self.direction = None
        self.rest = None
        self.backing_steps = 0
        self.yaw = 0.0

    def _line(self, physics: Physics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cube centre, goal and the unit push direction in xy.

        The direction follows the cube-to-goal line while the fingers are up; from when they
        start down behind the cube it stays fixed until they rise again.
        """
        cube = physics.body_position(self.cube)
        goal = physics.mocap_position(self.goal)
        to_goal = (goal - cube)[:2]
        if self.direction is None or (
            self.phase in ("start", "via", "align", "realign") and np.linalg.norm(to_goal) > 0.02
        ):
            self.direction = _unit(to_goal)
        return cube, goal, self.direction

    def _behind(self, cube: np.ndarray, direction: np.ndarray, height: float) -> np.ndarray:
        spot = cube[:2] - self.standoff * direction
        return np.clip(np.array([spot[0], spot[1], height]), WORKSPACE_LOW, WORKSPACE_HIGH)

    def _align_yaw(self, direction: np.ndarray) -> None:
        # The hand is symmetric: fold the push heading into the yaw range.
        angle = float(np.arctan2(direction[1], direction[0]))
        self.yaw = (angle + np.pi / 2) % np.pi - np.pi / 2

    def _back_off(self, gripper: np.ndarray, cube: np.ndarray) -> np.ndarray | None:
        """A spot straight away from the cube if the fingers are low beside it, else None.

        Rising while the fingers press on the cube would drag it up, so they first back off
        (for a few steps at most: a cube that follows them is left behind by rising).
        """
        away = (gripper - cube)[:2]
        low = gripper[2] < 2 * self.cube_half_size + 0.02
        if not low or np.linalg.norm(away) > self.contact + 0.012 or self.backing_steps >= 8:
            return None
        self.backing_steps += 1
        spot = gripper[:2] + 0.015 * _unit(away)
        return np.clip(np.array([spot[0], spot[1], gripper[2]]), WORKSPACE_LOW, WORKSPACE_HIGH)

    def _rise(self, gripper: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """Back off from the cube, then rise above hover height."""
        spot = self._back_off(gripper, cube)
        if spot is None:
            spot = np.array([gripper[0], gripper[1], self.hover + 0.015])
        return spot

    def act(self, physics: Physics) -> np.ndarray:
        gripper = physics.gripper_position()
        cube, goal, direction = self._line(physics)
        distance = float(np.linalg.norm((goal - cube)[:2]))
        if self.phase == "start":
            self._align_yaw(direction)
            self.via = np.clip(
                self.via_point(gripper, self._behind(cube, direction, self.hover)), WORKSPACE_LOW, WORKSPACE_HIGH
            )
            self.phase = "via"
        if self.phase == "via":
            if np.linalg.norm(self.via - gripper) < 0.03:
                self.phase = "align"
            return self.move(physics, self.via, self.yaw, CLOSED)
        if self.phase == "align":
            target = self._behind(cube, direction, max(self.hover, gripper[2] - 0.02))
            if np.linalg.norm(target[:2] - gripper[:2]) < 0.008 and gripper[2] < self.hover + 0.02:
                self.phase = "lower"
            near = np.linalg.norm(target[:2] - gripper[:2]) < 0.05
            return self.move(physics, target, self.yaw, CLOSED, precise=near)
        if self.phase == "lower":
            target = self._behind(cube, direction, self.push_height)
            if np.linalg.norm(target[:2] - gripper[:2]) > 0.015:
                self.phase, self.backing_steps = "realign", 0
            elif gripper[2] < self.push_height + 0.005:
                self.phase = "push"
            return self.move(physics, target, self.yaw, CLOSED, precise=True)
        if self.phase == "push":
            side = np.array([-direction[1], direction[0]])
            remaining = float((goal - cube)[:2] @ direction)
            drift = float((cube - goal)[:2] @ side)
            along = float((gripper - cube)[:2] @ direction)
            # Aim the fingers a little off-centre, towards the line from the drifted cube: sliding
            # across its face under the push they drag it back (the pads are grippy).
            offset = float(np.clip(-self.STEER_GAIN * drift, -self.STEER_LIMIT, self.STEER_LIMIT))
            lateral = float((cube - gripper)[:2] @ side) + offset
            if remaining < self.stop_distance:
                self.phase, self.rest, self.backing_steps = "done", None, 0
            elif abs(drift) > self.OFF_LINE or abs(lateral) > 0.018 or along > -self.contact + 0.008:
                self.phase, self.backing_steps = "realign", 0
            else:
                # Close in on the cube's face, keep the fingers at their offset and push along the line.
                gap = max(-along - self.contact, 0.0)
                step = min(remaining - self.stop_distance + 0.002 + gap, self.push_step)
                target_xy = gripper[:2] + max(step, 0.002) * direction + 0.7 * lateral * side
                target = np.array([target_xy[0], target_xy[1], self.push_height])
                return self.move(physics, target, self.yaw, CLOSED, precise=True)
        if self.phase == "realign":
            if gripper[2] > self.hover - 0.01:
                self._align_yaw(direction)
                self.phase = "align"
            return self.move(physics, self._rise(gripper, cube), self.yaw, CLOSED)
        # done: back off and rise, then hold still; push again if the cube is off the goal.
        if distance > SUCCESS_DISTANCE - 0.005:
            self.phase, self.backing_steps = "realign", 0
        spot = self._back_off(gripper, cube)
        if spot is None:
            if self.rest is None:
                self.rest = np.array([gripper[0], gripper[1], self.hover + 0.03])
            spot = self.rest
        return self.move(physics, spot, self.yaw, CLOSED, precise=True)
