"""``RobolearnEnv``: a gymnasium env over one task, with fast cameras and exact state get/set.

Control runs at 20 Hz: each ``step`` sets the arm's servo targets from the
action (see ``robolearn.envs.arm``) and advances the physics by 25 substeps of
2 ms. Observations follow the env's ``features`` (a ``FeatureSpec``):

- ``state``: proprioception, float32 (layout in ``arm.STATE_LAYOUT``);
- ``privileged``: object and goal state, float32 (layout in the task);
- ``rgb/<camera>``: uint8 (height, width, 3) per camera in ``cameras``.

Episodes are indexed by seed: ``reset(seed=s)`` always produces the same
initial state. Seeds from ``EVALUATION_SEED_START`` on are held out for
evaluation; recordings and training use seeds below it.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium
import mujoco
import numpy as np

from robolearn.envs import arm as arm_module
from robolearn.envs.arm import Arm
from robolearn.envs.spec import Feature, FeatureSpec
from robolearn.envs.task import Physics, Task, compose

CONTROL_RATE = 20
"""Control steps per second."""
EVALUATION_SEED_START = 1_000_000
"""Seeds at or above this are reserved for evaluation."""
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
"""Everything ``mj_step`` reads: time, qpos, qvel, act, warm-start, ctrl, applied forces, mocap."""

_WATCHED_WARNINGS = {
    mujoco.mjtWarning.mjWARN_BADQACC: "bad acceleration (the simulation diverged)",
    mujoco.mjtWarning.mjWARN_BADQPOS: "bad joint position",
    mujoco.mjtWarning.mjWARN_BADQVEL: "bad joint velocity",
    mujoco.mjtWarning.mjWARN_CONTACTFULL: "contact buffer full",
    mujoco.mjtWarning.mjWARN_CNSTRFULL: "constraint buffer full",
}
_WATCHED_INDEX = np.array([int(warning) for warning in _WATCHED_WARNINGS])


_open_envs: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_envs() -> None:
    for env in list(_open_envs):
        env.close()


def _register_exit_hook() -> None:
    # GL contexts must be freed before MuJoCo's own exit hook terminates the EGL display, or
    # every renderer prints an EGL error at exit. Exit hooks run last-registered first, so
    # this one is registered after the first renderer (and with it MuJoCo's GL module) exists.
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_open_envs)
        _exit_hook_registered = True


def evaluation_seeds(episodes: int, offset: int = 0) -> list[int]:
    """Held-out seeds for evaluation episodes ``offset .. offset + episodes - 1``."""
    return [EVALUATION_SEED_START + offset + i for i in range(episodes)]


class RobolearnEnv(gymnasium.Env):
    """One robolearn task as a gymnasium env. Build it with ``robolearn.make``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_RATE}

    def __init__(
        self,
        task: Task,
        cameras: Sequence[str] = ("front", "wrist"),
        image_size: int | tuple[int, int] = 84,
        reward_type: Literal["dense", "sparse"] = "dense",
        terminate_on_success: bool = False,
        max_steps: int | None = None,
        render_mode: str | None = None,
        render_size: int | tuple[int, int] = 256,
        render_camera: str = "view",
    ) -> None:
        if reward_type not in ("dense", "sparse"):
            raise ValueError(f"reward_type must be 'dense' or 'sparse', found {reward_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', found {render_mode!r}")
        self.task = task
        self.reward_type = reward_type
        self.terminate_on_success = terminate_on_success
        self.max_steps = int(max_steps or task.max_steps)
        self.render_mode = render_mode
        self.image_size = _size(image_size)
        self.render_size = _size(render_size)
        self.control_rate = CONTROL_RATE

        mjcf_model = compose(task)
        self.mjcf_xml = mjcf_model.to_xml_string()
        self.model = mujoco.MjModel.from_xml_string(self.mjcf_xml, mjcf_model.get_assets())
        self.data = mujoco.MjData(self.model)
        self.physics = Physics(self.model, self.data, Arm(self.model))
        self.substeps = round(1.0 / (CONTROL_RATE * self.model.opt.timestep))
        self._state_size = mujoco.mj_stateSize(self.model, STATE_SPEC)
        self._warning_counts = self.data.warning.number  # a live view of MuJoCo's warning counters

        self.cameras = tuple(cameras)
        self._camera_ids = {name: self._camera_id(name) for name in (*self.cameras, render_camera)}
        self.render_camera = render_camera
        self._renderers: dict[tuple[str, int, int], mujoco.Renderer] = {}

        self.features = self._features()
        self.observation_space = self.features.observation_space()
        self.action_space = self.features.action_space()
        self.steps = 0
        self.episode_seed: int | None = None
        self._ended_by_warning = ""
        _open_envs.add(self)

    # ------------------------------------------------------------------ spec
    def _features(self) -> FeatureSpec:
        height, width = self.image_size
        observations = {
            "state": Feature((arm_module.STATE_SIZE,), "float32", "proprioception", layout=arm_module.STATE_LAYOUT),
            "privileged": Feature(
                (sum(size for _, size, _ in self.task.privileged_layout),),
                "float32",
                "object and goal state from the simulator (not available to a real robot)",
                layout=self.task.privileged_layout,
            ),
        }
        for camera in self.cameras:
            observations[f"rgb/{camera}"] = Feature((height, width, 3), "uint8", f"RGB image from the {camera} camera")
        action = Feature(
            (arm_module.ACTION_SIZE,),
            "float32",
            "normalised end-effector command",
            low=-1.0,
            high=1.0,
            layout=(
                ("translation", 3, f"world x y z, x {arm_module.MAX_TRANSLATION} m per step"),
                ("yaw", 1, f"about world z, x {arm_module.MAX_YAW} rad per step"),
                ("gripper", 1, "-1 open, +1 closed"),
            ),
        )
        return FeatureSpec(observations, action)

    def _camera_id(self, name: str) -> int:
        for candidate in (name, f"arm/{name}"):
            camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, candidate)
            if camera_id >= 0:
                return camera_id
        known = [self.model.camera(i).name.removeprefix("arm/") for i in range(self.model.ncam)]
        raise ValueError(f"no camera named {name!r} in task {self.task.name!r}; cameras: {', '.join(known)}")

    # ------------------------------------------------------------- lifecycle
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, EVALUATION_SEED_START))
        self.episode_seed = int(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.task.initialize_episode(self.physics, np.random.default_rng(self.episode_seed))
        mujoco.mj_forward(self.model, self.data)
        self.steps = 0
        self._ended_by_warning = ""
        return self._observe(), self._info()

    def step(self, action):
        if self._ended_by_warning:
            raise RuntimeError(
                f"the episode ended with a physics warning ({self._ended_by_warning}); call reset() first"
            )
        action = self.validate_action(action)
        self.physics.arm.apply(self.data, action)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        # Recompute positions and contacts for the new state, exactly as set_state does, so
        # observations and rewards depend on the state alone.
        mujoco.mj_forward(self.model, self.data)
        self.steps += 1
        self._ended_by_warning = self._physics_warning()
        success = self.task.is_success(self.physics)
        reward = float(success) if self.reward_type == "sparse" else self.dense_reward(success)
        terminated = bool(self._ended_by_warning) or (self.terminate_on_success and success)
        truncated = self.steps >= self.max_steps
        return self._observe(), reward, terminated, truncated, self._info(success)

    def dense_reward(self, success: bool | None = None) -> float:
        """The dense reward of the current state: 1 on success, else the task's staged reward (what
        ``step`` returns with reward_type dense; fine-tuning's shaping potential)."""
        if success is None:
            success = self.task.is_success(self.physics)
        return 1.0 if success else float(self.task.reward(self.physics))

    def validate_action(self, action) -> np.ndarray:
        """The action as float64, or a clear error if it has the wrong shape or range."""
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"action must be {arm_module.ACTION_SIZE} numbers, found {action!r}") from error
        if array.shape == (arm_module.ACTION_SIZE,) and (np.abs(array) <= 1.0 + 1e-6).all():
            return array  # the common case, checked in one pass (NaN fails the comparison)
        if array.shape != (arm_module.ACTION_SIZE,):
            raise ValueError(
                f"action must have shape ({arm_module.ACTION_SIZE},) = [dx, dy, dz, dyaw, gripper], "
                f"found shape {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"action has non-finite entries: {array.tolist()}")
        outside = np.flatnonzero(np.abs(array) > 1.0 + 1e-6)
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"action[{i}] = {array[i]:.4g} is outside [-1, 1]; robolearn actions are normalised "
                "end-effector commands, so scale or clip them first (np.clip(action, -1, 1))"
            )
        return array

    def _physics_warning(self) -> str:
        counts = self._warning_counts
        if counts.any() and counts[_WATCHED_INDEX].any():
            meanings = [meaning for warning, meaning in _WATCHED_WARNINGS.items() if counts[warning] > 0]
            return f"{', '.join(meanings)} at t={self.data.time:.3f}s"
        return ""  # MuJoCo's own position and velocity checks catch NaN and runaway values

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        if success is None:
            success = self.task.is_success(self.physics)
        return {"is_success": bool(success), "physics_warning": self._ended_by_warning}

    def _observe(self) -> dict[str, np.ndarray]:
        observation = {
            "state": self.physics.arm.state(self.data),
            "privileged": np.asarray(self.task.privileged_state(self.physics), dtype=np.float32),
        }
        for camera in self.cameras:
            observation[f"rgb/{camera}"] = self.render_camera_image(camera)
        return observation

    def is_success(self) -> bool:
        return bool(self.task.is_success(self.physics))

    # ----------------------------------------------------------------- state
    def get_state(self) -> np.ndarray:
        """The full simulator state (float64 vector; see ``STATE_SPEC``)."""
        state = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Restore a state from ``get_state``; stepping on from it reproduces the episode bit for bit.

        Returns the observation at that state.
        """
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._state_size,):
            raise ValueError(
                f"state must have shape ({self._state_size},) for task {self.task.name!r}, found {state.shape}; "
                "was it saved from a different task or MuJoCo version?"
            )
        mujoco.mj_setState(self.model, self.data, state, STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
        self.steps = round(self.data.time * CONTROL_RATE)
        self._ended_by_warning = ""
        return self._observe()

    # ------------------------------------------------------------- rendering
    def render_camera_image(self, camera: str, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """An RGB frame (uint8, height x width x 3) from a named camera at the current state."""
        height, width = _size(size) if size is not None else self.image_size
        key = (camera, height, width)
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = self._renderers[key] = self._make_renderer(height, width)
        camera_id = self._camera_ids.get(camera)
        if camera_id is None:
            camera_id = self._camera_ids[camera] = self._camera_id(camera)
        renderer.update_scene(self.data, camera=camera_id)
        return renderer.render()

    def _make_renderer(self, height: int, width: int) -> mujoco.Renderer:
        # The offscreen buffer is allocated from the model's size when the renderer is made; a
        # buffer the size of the image is much faster in software GL than a larger one.
        visual = self.model.vis.global_
        visual.offwidth, visual.offheight = width, height
        try:
            renderer = mujoco.Renderer(self.model, height=height, width=width)
        except mujoco.FatalError as error:
            raise RuntimeError(
                f"MuJoCo could not create an OpenGL context ({error}). With no display, MuJoCo must render "
                "through EGL: set MUJOCO_GL=egl in the environment, or import robolearn before mujoco so it "
                "can choose for you; EGL needs the libegl1 and libgl1-mesa-dri packages (make install adds them)"
            ) from error
        _register_exit_hook()
        return renderer

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera_image(self.render_camera, self.render_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(s) for s in size)
    if height < 8 or width < 8:
        raise ValueError(f"image size must be at least 8x8 pixels, found {height}x{width}")
    return height, width
