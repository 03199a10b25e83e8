"""The 7-joint arm, its proprioception and its Cartesian controller.

An action is a normalised end-effector command in [-1, 1]^5:

====  =========================================  ==================================
idx   meaning                                    scale at |a| = 1 (per 50 ms step)
====  =========================================  ==================================
0-2   gripper-centre translation, world x, y, z  ``MAX_TRANSLATION`` = 3 cm
3     yaw of the hand about world z              ``MAX_YAW`` = 0.2 rad
4     gripper: -1 fully open, +1 fully closed    absolute finger target
====  =========================================  ==================================

Every control step the controller turns the command into a target pose (current
gripper centre plus the delta, clipped to the workspace box; the hand always
points straight down) and solves one damped-least-squares inverse-kinematics
step for the seven joint position servos, with a null-space pull towards the
home posture. The controller keeps no state of its own: the next command
depends only on the simulator state, which is what makes saved states replay
exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np

ARM_XML = Path(__file__).parent / "assets" / "arm.xml"

ACTION_SIZE = 5
MAX_TRANSLATION = 0.03
"""Metres the gripper centre moves per control step at full command."""
MAX_YAW = 0.2
"""Radians the hand turns per control step at full command."""
YAW_LIMIT = np.pi / 2
"""The hand's yaw is kept in [-YAW_LIMIT, YAW_LIMIT] (the gripper is symmetric)."""
FINGER_OPEN = 0.04
"""Finger travel in metres; the gap between the pads is the sum of both fingers."""
WORKSPACE_LOW = np.array([-0.2, -0.25, 0.02])
WORKSPACE_HIGH = np.array([0.12, 0.25, 0.35])
"""Box (world frame, metres) that the gripper centre is kept inside."""

JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGERS = ("finger_left", "finger_right")
HOME_QPOS = np.array([0.0, 0.55, 0.0, 1.45, 0.0, 1.14, 0.0])
"""Joint angles (rad) of the home posture: gripper centre near (0, 0, 0.2), pointing down."""

STATE_LAYOUT = (
    ("gripper_position", 3, "m, world frame, centre between the finger pads"),
    ("gripper_quaternion", 4, "w x y z, world frame, hand orientation"),
    ("gripper_opening", 1, "m, gap between the finger pads"),
    ("joint_positions", 7, "rad, arm joints 1-7"),
)
"""The proprioceptive ``state`` vector, in order: (name, size, units and frame)."""
STATE_SIZE = sum(size for _, size, _ in STATE_LAYOUT)

_DAMPING = 1e-4 * np.eye(6)
_DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
"""Hand orientation at yaw 0: fingers point down, close along world y."""


def down_rotation(yaw: float) -> np.ndarray:
    """Rotation matrix of a downward-pointing hand turned by ``yaw`` about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[-c, -s, 0.0], [-s, c, 0.0], [0.0, 0.0, -1.0]])  # Rz(yaw) @ _DOWN


class Arm:
    """Binds the arm's named joints, actuators and sites in a compiled model.

    ``prefix`` is the namescope PyMJCF gave the attached arm model ("arm/").
    """

    def __init__(self, model: mujoco.MjModel, prefix: str = "arm/") -> None:
        self.model = model
        joints = [model.joint(prefix + name) for name in JOINTS]
        fingers = [model.joint(prefix + name) for name in FINGERS]
        self.qpos_index = np.array([j.qposadr[0] for j in joints])
        self.dof_index = np.array([j.dofadr[0] for j in joints])
        self.finger_qpos_index = np.array([j.qposadr[0] for j in fingers])
        self.actuator_index = np.array([model.actuator(prefix + name).id for name in JOINTS])
        self.finger_actuator_index = np.array([model.actuator(prefix + name).id for name in FINGERS])
        self.grip_site = model.site(prefix + "grip").id
        self.hand_body = model.body(prefix + "hand").id
        self.finger_bodies = tuple(model.body(prefix + name).id for name in FINGERS)
        self.joint_low = np.array([j.range[0] for j in joints])
        self.joint_high = np.array([j.range[1] for j in joints])
        self._jacobian = np.zeros((6, model.nv))
        first = int(self.dof_index[0])
        if not np.array_equal(self.dof_index, np.arange(first, first + len(JOINTS))):
            raise ValueError(f"the arm's joints must be consecutive degrees of freedom, found {self.dof_index}")
        self._dof_slice = slice(first, first + len(JOINTS))
        first = int(self.qpos_index[0])
        if not np.array_equal(self.qpos_index, np.arange(first, first + len(JOINTS))):
            raise ValueError(f"the arm's joints must be consecutive in qpos, found {self.qpos_index}")
        self._qpos_slice = slice(first, first + len(JOINTS))
        self._quaternion = np.empty(4)

    # ----------------------------------------------------------------- reading
    def gripper_position(self, data: mujoco.MjData) -> np.ndarray:
        """Gripper centre (m, world frame)."""
        return data.site_xpos[self.grip_site].copy()

    def gripper_rotation(self, data: mujoco.MjData) -> np.ndarray:
        return data.site_xmat[self.grip_site].reshape(3, 3).copy()

    def yaw(self, data: mujoco.MjData) -> float:
        """Hand yaw (rad) about world z, 0 when the fingers close along world y."""
        rotation = data.site_xmat[self.grip_site]  # row-major 3x3: the finger axis is column 1
        return math.atan2(-rotation[1], rotation[4])

    def gripper_opening(self, data: mujoco.MjData) -> float:
        """Gap between the finger pads (m)."""
        return float(data.qpos[self.finger_qpos_index].sum())

    def state(self, data: mujoco.MjData) -> np.ndarray:
        """The proprioceptive vector described by ``STATE_LAYOUT`` (float32)."""
        quaternion = self._quaternion
        mujoco.mju_mat2Quat(quaternion, data.site_xmat[self.grip_site])
        state = np.empty(STATE_SIZE, np.float32)
        state[0:3] = data.site_xpos[self.grip_site]
        state[3:7] = quaternion
        state[7] = data.qpos[self.finger_qpos_index].sum()
        state[8:15] = data.qpos[self._qpos_slice]
        return state

    def touching(self, data: mujoco.MjData, geom_id: int) -> tuple[bool, bool]:
        """Whether the left and right finger touch the geom ``geom_id``."""
        left = right = False
        for contact in data.contact[: data.ncon]:
            bodies = (self.model.geom_bodyid[contact.geom1], self.model.geom_bodyid[contact.geom2])
            if geom_id not in (contact.geom1, contact.geom2):
                continue
            left |= self.finger_bodies[0] in bodies
            right |= self.finger_bodies[1] in bodies
        return left, right

    # ----------------------------------------------------------------- control
    def joint_step(self, data: mujoco.MjData, target_position: np.ndarray, target_yaw: float) -> np.ndarray:
        """One damped-least-squares IK step: joint angles that move the hand towards the target."""
        mujoco.mj_jacSite(self.model, data, self._jacobian[:3], self._jacobian[3:], self.grip_site)
        jacobian = self._jacobian[:, self._dof_slice]
        rotation = data.site_xmat[self.grip_site].reshape(3, 3)
        # Orientation error as a world-frame rotation vector: half the sum of r_i x d_i over the
        # axes, written as the skew part of D R^T (cheaper than three cross products).
        m = down_rotation(target_yaw) @ rotation.T
        error = np.empty(6)
        error[:3] = target_position - data.site_xpos[self.grip_site]
        error[3:] = 0.5 * (m[2, 1] - m[1, 2]), 0.5 * (m[0, 2] - m[2, 0]), 0.5 * (m[1, 0] - m[0, 1])
        q = data.qpos[self._qpos_slice]
        # dq = J+ e + (I - J+ J) z with the damped pseudo-inverse J+ = J^T (J J^T + D)^-1 and z a
        # pull towards home. MuJoCo's Cholesky routines are much cheaper than numpy's on 6x6.
        pull = 0.1 * (HOME_QPOS - q)
        gram = jacobian @ jacobian.T + _DAMPING
        mujoco.mju_cholFactor(gram, 0.0)
        right_hand = error - jacobian @ pull
        solution = np.empty(6)
        mujoco.mju_cholSolve(solution, gram, right_hand)
        dq = jacobian.T @ solution + pull
        step = np.minimum(np.maximum(dq, -0.3), 0.3)
        return np.minimum(np.maximum(q + step, self.joint_low), self.joint_high)

    def apply(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """Set the actuator targets for one control step from a validated action."""
        target = data.site_xpos[self.grip_site] + MAX_TRANSLATION * action[:3]
        target = np.minimum(np.maximum(target, WORKSPACE_LOW), WORKSPACE_HIGH)
        target_yaw = min(max(self.yaw(data) + MAX_YAW * action[3], -YAW_LIMIT), YAW_LIMIT)
        data.ctrl[self.actuator_index] = self.joint_step(data, target, target_yaw)
        data.ctrl[self.finger_actuator_index] = FINGER_OPEN * (1.0 - action[4]) / 2.0

    def place(self, data: mujoco.MjData, position: np.ndarray, yaw: float = 0.0, opening: float = 1.0) -> None:
        """Put the arm at rest with its gripper centre at ``position`` (kinematics only, no physics).

        ``opening`` is the finger command in [0, 1] (1 = fully open). Servo targets are set to
        the reached posture so the arm stays there when physics starts.
        """
        data.qpos[self.qpos_index] = HOME_QPOS
        for _ in range(60):
            mujoco.mj_kinematics(self.model, data)
            mujoco.mj_comPos(self.model, data)
            data.qpos[self.qpos_index] = self.joint_step(data, position, yaw)
        data.qpos[self.finger_qpos_index] = FINGER_OPEN * opening
        data.qvel[self.dof_index] = 0.0
        data.ctrl[self.actuator_index] = data.qpos[self.qpos_index]
        data.ctrl[self.finger_actuator_index] = FINGER_OPEN * opening
        mujoco.mj_kinematics(self.model, data)
        mujoco.mj_comPos(self.model, data)
