"""Scripted operators: stochastic controllers that drive the arm like a careful person would.

They are what headless recording, tests and benchmarks use when nobody is at
the keyboard. Each episode draws its own pace and hand tremor, approaches
through a random via point and hesitates now and then, so recorded
demonstrations vary the way human ones do. Operators see the simulator (like a
person looking at the scene) through ``Physics``'s named quantities and return
actions in the env's normalised action space.
"""

from __future__ import annotations

import numpy as np

from robolearn.envs.arm import MAX_TRANSLATION, MAX_YAW, YAW_LIMIT
from robolearn.envs.task import Physics

OPEN, CLOSED = -1.0, 1.0


def wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def quaternion_yaw(quaternion: np.ndarray) -> float:
    """Yaw (rad) about world z of a quaternion (w x y z)."""
    w, x, y, z = quaternion
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def grasp_yaw(quaternion: np.ndarray, hand_yaw: float = 0.0) -> float:
    """The hand yaw that grips a cube squarely with the least turning from ``hand_yaw``.

    A cube looks the same every quarter turn, so of its equivalent yaws this picks the
    one nearest the hand's (then keeps it within the hand's range). Folding into a fixed
    interval instead would make the target jump by 90 degrees between similar scenes,
    which a learned policy cannot imitate.
    """
    offset = (quaternion_yaw(quaternion) - hand_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
    yaw = hand_yaw + offset
    if abs(yaw) > YAW_LIMIT:
        yaw -= np.sign(yaw) * np.pi / 2
    return float(yaw)


class ScriptedOperator:
    """Base class: per-episode style plus ``move``, a noisy proportional reach towards a target."""

    def __init__(self, random_state: np.random.Generator) -> None:
        self.rng = random_state
        self.speed = float(random_state.uniform(0.6, 1.0))
        """Largest command per axis this episode (a slower or faster person)."""
        self.tremor = float(random_state.uniform(0.03, 0.12))
        """Standard deviation of the noise added to translation commands."""
        self.hesitation_rate = float(random_state.uniform(0.0, 0.04))
        self._hesitating = 0

    def act(self, physics: Physics) -> np.ndarray:
        raise NotImplementedError

    def via_point(self, start: np.ndarray, goal: np.ndarray, spread: float = 0.05, lift: float = 0.04) -> np.ndarray:
        """A random point roughly between ``start`` and ``goal``, so approach paths vary."""
        point = (start + goal) / 2 + self.rng.uniform(-spread, spread, 3) * np.array([1.0, 1.0, 0.0])
        point[2] = max(start[2], goal[2]) + self.rng.uniform(0.0, lift)
        return point

    def move(
        self, physics: Physics, target: np.ndarray, yaw: float, gripper: float, precise: bool = False
    ) -> np.ndarray:
        """An action that moves the gripper centre towards ``target`` (m, world) and the hand to ``yaw``."""
        translation = (np.asarray(target) - physics.gripper_position()) / MAX_TRANSLATION
        largest = np.abs(translation).max()
        limit = self.speed * (0.5 if precise else 1.0)
        if largest > limit:
            translation *= limit / largest
        translation += self.rng.normal(0.0, self.tremor * (0.3 if precise else 1.0), 3)
        if self._hesitating > 0:
            self._hesitating -= 1
            translation[:] = 0.0
        elif self.rng.random() < self.hesitation_rate:
            self._hesitating = int(self.rng.integers(1, 5))
        yaw = float(np.clip(yaw, -YAW_LIMIT, YAW_LIMIT))
        turn = wrap_angle(yaw - physics.arm.yaw(physics.data)) / MAX_YAW
        action = np.concatenate([translation, [np.clip(turn, -1.0, 1.0) * self.speed, gripper]])
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class PickOperator(ScriptedOperator):
    """Pick up a free cube and, optionally, set it down on a place target.

    Phases: approach (via a random point, open), descend, close, lift; then, with a
    place target: carry, lower, release, retreat. A grasp that closes on nothing or
    lets the cube slip goes back to the approach.
    """

    def __init__(
        self,
        random_state: np.random.Generator,
        cube: str,
        cube_half_size: float,
        carry_height: float,
        place_target=None,
    ) -> None:
        super().__init__(random_state)
        self.cube = cube
        self.cube_half_size = cube_half_size
        self.carry_height = carry_height
        self.place_target = place_target
        self.phase = "start"
        self.via = None
        self.counter = 0

    def _cube(self, physics: Physics) -> tuple[np.ndarray, float]:
        hand_yaw = physics.arm.yaw(physics.data)
        return physics.body_position(self.cube), grasp_yaw(physics.body_quaternion(self.cube), hand_yaw)

    def act(self, physics: Physics) -> np.ndarray:
        gripper = physics.gripper_position()
        cube, yaw = self._cube(physics)
        above = cube + np.array([0.0, 0.0, 0.06 + self.rng.uniform(0.0, 0.03)])
        if self.phase == "start":
            self.via = self.via_point(gripper, above)
            self.phase = "via"
        if self.phase == "via":
            if np.linalg.norm(self.via - gripper) < 0.03:
                self.phase = "approach"
            return self.move(physics, self.via, yaw, OPEN)
        if self.phase == "approach":
            target = np.array([cube[0], cube[1], max(gripper[2], cube[2] + 0.05)])
            yaw_error = abs(wrap_angle(yaw - physics.arm.yaw(physics.data)))
            # Descend once roughly aligned; the hand keeps turning on the way down.
            if np.linalg.norm(target[:2] - gripper[:2]) < 0.01 and yaw_error < 0.15:
                self.phase = "descend"
            return self.move(physics, target, yaw, OPEN, precise=True)
        if self.phase == "descend":
            if np.linalg.norm(cube[:2] - gripper[:2]) > 0.02:
                self.phase = "approach"
            elif gripper[2] - cube[2] < 0.008:
                self.phase, self.counter = "close", int(self.rng.integers(4, 7))
            return self.move(physics, cube, yaw, OPEN, precise=True)
        if self.phase == "close":
            self.counter -= 1
            if self.counter <= 0:
                self.phase = "lift"
            return self.move(physics, gripper, yaw, CLOSED, precise=True) * np.array([0, 0, 0, 0, 1], np.float32)
        if self.phase in ("lift", "carry", "lower"):
            if self._lost_grip(physics, gripper, cube):
                self.phase = "retry"
                return self.move(physics, gripper + [0, 0, 0.05], yaw, OPEN)
            if self.phase == "lift":
                target = np.array([gripper[0], gripper[1], self.carry_height])
                if gripper[2] > self.carry_height - 0.02 and self.place_target is not None:
                    self.phase = "carry"
                return self.move(physics, target, physics.arm.yaw(physics.data), CLOSED)
            place = np.asarray(self.place_target(physics) if callable(self.place_target) else self.place_target)
            offset = cube - gripper  # where the cube hangs relative to the gripper centre
            if self.phase == "carry":
                target = np.array([place[0] - offset[0], place[1] - offset[1], self.carry_height])
                if np.linalg.norm(target[:2] - gripper[:2]) < 0.008:
                    self.phase = "lower"
                return self.move(physics, target, physics.arm.yaw(physics.data), CLOSED, precise=True)
            target = place - offset + np.array([0.0, 0.0, 0.004])
            if np.linalg.norm(target[:2] - gripper[:2]) > 0.02:
                self.phase = "carry"
            elif gripper[2] - target[2] < 0.006:
                self.phase, self.counter = "release", int(self.rng.integers(3, 6))
            return self.move(physics, target, physics.arm.yaw(physics.data), CLOSED, precise=True)
        if self.phase == "retry":
            if physics.arm.gripper_opening(physics.data) > 0.07:
                self.phase = "start"
            return self.move(physics, gripper + [0, 0, 0.03], yaw, OPEN)
        if self.phase == "release":
            self.counter -= 1
            if self.counter <= 0:
                self.phase = "retreat"
            return self.move(physics, gripper, physics.arm.yaw(physics.data), OPEN) * np.array(
                [0, 0, 0, 0, 1], np.float32
            )
        # retreat, then hold still above the placed cube
        target = np.array([gripper[0], gripper[1], cube[2] + 0.12])
        return self.move(physics, target, physics.arm.yaw(physics.data), OPEN)

    def _lost_grip(self, physics: Physics, gripper: np.ndarray, cube: np.ndarray) -> bool:
        closed_on_nothing = physics.arm.gripper_opening(physics.data) < 0.6 * 2 * self.cube_half_size
        slipped = np.linalg.norm(cube - gripper) > 0.03
        return closed_on_nothing or slipped


OPERATOR_SEED_OFFSET = 12345
"""An episode's operator draws its style from ``episode seed + OPERATOR_SEED_OFFSET``."""


PERTURBATION_SEED_OFFSET = 54321
"""An episode's perturbations are drawn from ``episode seed + PERTURBATION_SEED_OFFSET``."""
PERTURBATION_STEPS = (3, 8)
"""Range of a perturbation's length in steps (both ends included)."""


class ScriptedPolicy:
    """The policy interface (``reset``, ``act``) over a task's scripted operator.

    ``act`` ignores the observation and reads the env's simulator instead, like a
    person looking at the scene. A fresh operator is drawn for every episode from
    the episode's seed, so the same seed always gives the same demonstration.

    ``perturb`` (the chance per step) knocks the arm off the operator's course now and then: for a
    few steps (``PERTURBATION_STEPS``) the action is a random translation at the operator's pace,
    with the operator's own yaw and gripper commands, and ``perturbed`` is True. The operator
    keeps watching the scene throughout and recovers from wherever the arm ends up; recording
    marks the perturbed steps so that training imitates the recovery and not the perturbation
    (the DART idea: demonstrations that show how to get back on course).
    """

    def __init__(self, env, perturb: float = 0.0) -> None:
        if not 0.0 <= perturb < 1.0:
            raise ValueError(f"perturb is a chance per step in [0, 1), found {perturb}")
        self.env = env
        self.perturb = perturb
        self.operator: ScriptedOperator | None = None
        self.perturbed = False
        """Whether the last action ``act`` returned was a perturbation."""
        self._rng: np.random.Generator | None = None  # drawn per episode by reset
        self._remaining = 0
        self._push = np.zeros(3)

    def reset(self) -> None:
        seed = self.env.episode_seed if self.env.episode_seed is not None else 0
        self.operator = self.env.task.scripted_operator(np.random.default_rng(seed + OPERATOR_SEED_OFFSET))
        self._rng = np.random.default_rng(seed + PERTURBATION_SEED_OFFSET)
        self._remaining, self.perturbed = 0, False

    def act(self, observation=None) -> np.ndarray:
        if self.operator is None:
            self.reset()
        action = self.operator.act(self.env.physics)
        if self.perturb and not self._remaining and self._rng.random() < self.perturb:
            self._remaining = int(self._rng.integers(PERTURBATION_STEPS[0], PERTURBATION_STEPS[1] + 1))
            direction = self._rng.normal(size=3) * np.array([1.0, 1.0, 0.5])
            self._push = direction / max(float(np.linalg.norm(direction)), 1e-9) * self.operator.speed
        self.perturbed = self._remaining > 0
        if self.perturbed:
            self._remaining -= 1
            action = np.concatenate([self._push, action[3:]]).astype(np.float32)
        return action
