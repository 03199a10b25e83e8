"""Gymnasium and dm_control envs behind ``RobolearnEnv``'s interface (``make("gym:<id>")``, ``make("dmc:<d>-<t>")``).

Observations follow ``features``: ``state`` float32 (n,), ``privileged`` float32 (n,) (the same
vector: these envs expose nothing beyond their observation) and ``rgb/<camera>`` uint8 (H, W, 3).
The same seed replays the same episode, ``get_state``/``set_state`` are exact, and episodes are
truncated at ``max_steps``. After every physics step the adapters run ``mj_forward``, so an
observation (and image) depends on the simulator state alone and ``set_state`` returns exactly
what ``step`` returned at that state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import mujoco
import numpy as np

from robolearn.envs.env import EVALUATION_SEED_START, STATE_SPEC, _open_envs, _register_exit_hook, _size
from robolearn.envs.spec import Feature, FeatureSpec

Observation = dict[str, np.ndarray]
"""``state``/``privileged`` float32 (n,) and ``rgb/<camera>`` uint8 (H, W, 3)."""
StepResult = tuple[Observation, float, bool, bool, dict[str, Any]]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, C) image to ``size`` = (height, width)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    rows = (np.arange(height) * image.shape[0]) // height
    columns = (np.arange(width) * image.shape[1]) // width
    return np.ascontiguousarray(image[rows[:, None], columns[None, :]])


class _Adapter(gymnasium.Env):
    """What both adapters share: the feature spec, action checks, seeds and step counting."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def _build(
        self, state_layout: tuple[tuple[str, int, str], ...], low: np.ndarray, high: np.ndarray, label: str
    ) -> None:
        """Set ``features`` and the spaces from the state layout and the action bounds (both (m,))."""
        size = sum(entry[1] for entry in state_layout)
        height, width = self.image_size
        observations = {
            "state": Feature((size,), "float32", f"observation of {label}, flattened", layout=state_layout),
            "privileged": Feature((size,), "float32", "same as state: the env has no separate simulator state"),
        }
        for camera in self.cameras:
            observations[f"rgb/{camera}"] = Feature((height, width, 3), "uint8", f"RGB image from camera {camera}")
        self._low, self._high = low.astype(np.float64), high.astype(np.float64)
        uniform = bool(np.all(low == low.flat[0]) and np.all(high == high.flat[0]) and low.size)
        action = Feature(
            low.shape,
            "float32",
            f"action of {label}" + ("" if uniform else f"; bounds low={low.tolist()} high={high.tolist()}"),
            low=float(low.flat[0]) if uniform else None,
            high=float(high.flat[0]) if uniform else None,
        )
        self.features = FeatureSpec(observations, action)
        self.observation_space = self.features.observation_space()
        self.action_space = (
            self.features.action_space() if uniform else gymnasium.spaces.Box(low, high, dtype=np.float32)
        )
        self.metadata = {**self.metadata, "render_fps": self.control_rate}
        self.steps = 0
        self.episode_seed: int | None = None
        self._success = False
        _open_envs.add(self)  # closed at exit, before the GL display goes (see env._register_exit_hook)

    def validate_action(self, action: Any) -> np.ndarray:
        """The action as float64 (m,) within the bounds, or a ValueError naming expected and found."""
        array = np.asarray(action, dtype=np.float64)
        if array.shape != self._low.shape:
            raise ValueError(f"action must have shape {self._low.shape}, found shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"action has non-finite entries: {array.tolist()}")
        low = self._low - 1e-6 * np.maximum(1.0, np.abs(self._low))
        high = self._high + 1e-6 * np.maximum(1.0, np.abs(self._high))
        outside = np.flatnonzero((array < low) | (array > high))
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"action[{i}] = {array[i]:.4g} is outside its bounds [{self._low[i]:.4g}, {self._high[i]:.4g}]; "
                "scale or clip it first (np.clip(action, env.action_space.low, env.action_space.high))"
            )
        return np.clip(array, self._low, self._high)

    def _begin_episode(self, seed: int | None) -> int:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, EVALUATION_SEED_START))
        self.episode_seed, self.steps, self._success = int(seed), 0, False
        return self.episode_seed

    def _observe(self, state: Any) -> Observation:
        vector = np.asarray(state, dtype=np.float32).reshape(-1)
        observation = {"state": vector, "privileged": vector.copy()}
        for camera in self.cameras:
            observation[f"rgb/{camera}"] = self.render_camera_image(camera)
        return observation

    def _info(self, warning: str = "") -> dict[str, Any]:
        return {"is_success": self._success, "physics_warning": warning}

    def is_success(self) -> bool:
        """Whether the wrapped env reported success on the last step (False when it never does)."""
        return self._success

    def render_camera_image(self, camera: str, size: int | tuple[int, int] | None = None) -> np.ndarray:
        raise NotImplementedError

    def render(self) -> np.ndarray | None:
        return self.render_camera_image(self.cameras[0]) if self.cameras else None


class GymnasiumAdapter(_Adapter):
    """Any gymnasium env with a Box observation, a Box action and ``rgb_array`` rendering.

    ``state`` is the env's observation flattened to float32 (n,); the only camera is ``render``
    (``env.render()``, rendered at ``image_size`` where the env takes width/height, as MuJoCo envs
    do, and resized otherwise). ``get_state``/``set_state`` need a MuJoCo-backed env. The adapter
    owns truncation: the wrapped ``TimeLimit`` flag is ignored and episodes end at ``max_steps``
    (default: the env's registered ``max_episode_steps``).
    """

    def __init__(
        self,
        env_id: str,
        image_size: int | tuple[int, int] = 84,
        cameras: Sequence[str] = ("render",),
        max_steps: int | None = None,
        **make_kwargs: Any,
    ) -> None:
        self.env_id, self.image_size, self.cameras = env_id, _size(image_size), tuple(cameras)
        if set(self.cameras) - {"render"}:
            raise ValueError(f"gymnasium envs have one camera, 'render'; found cameras {self.cameras}")
        height, width = self.image_size
        try:
            env = gymnasium.make(env_id, render_mode="rgb_array", width=width, height=height, **make_kwargs)
        except TypeError:  # the env takes no width/height: render at its own size and resize
            env = gymnasium.make(env_id, render_mode="rgb_array", **make_kwargs)
        self._env = env
        if "rgb_array" not in env.metadata.get("render_modes", ()):
            raise ValueError(
                f"{env_id} cannot render rgb_array; its render modes are {env.metadata.get('render_modes')}"
            )
        for what, space in (("observation", env.observation_space), ("action", env.action_space)):
            if not isinstance(space, gymnasium.spaces.Box):
                raise ValueError(f"{env_id}: the adapter needs a Box {what} space, found {space}")
        unwrapped = env.unwrapped
        model, data = getattr(unwrapped, "model", None), getattr(unwrapped, "data", None)
        self._mujoco = (
            isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData) and hasattr(unwrapped, "_get_obs")
        )
        limit = max_steps or (env.spec.max_episode_steps if env.spec else None)
        if not limit:
            raise ValueError(f"{env_id} has no registered episode limit; pass max_steps")
        self.max_steps = int(limit)
        fps = env.metadata.get("render_fps") or (1.0 / unwrapped.dt if hasattr(unwrapped, "dt") else None)
        if not fps:
            raise ValueError(f"{env_id} declares no metadata['render_fps'] and no dt, so its control rate is unknown")
        self.control_rate = float(fps)
        size = int(np.prod(env.observation_space.shape))
        space = env.action_space
        if len(space.shape) != 1:
            raise ValueError(f"{env_id}: the adapter needs a vector action space, found shape {space.shape}")
        self._action_dtype = space.dtype
        self._build((("observation", size, ""),), space.low, space.high, env_id)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        observation, info = self._env.reset(seed=self._begin_episode(seed), options=options)
        if self._mujoco:
            observation = self._forward()
        self._success = _reported_success(info)
        return self._observe(observation), self._info()

    def step(self, action: Any) -> StepResult:
        action = self.validate_action(action).astype(self._action_dtype)
        observation, reward, terminated, _, info = self._env.step(action)
        if self._mujoco:
            observation = self._forward()
        self.steps += 1
        self._success = _reported_success(info)
        return self._observe(observation), float(reward), bool(terminated), self.steps >= self.max_steps, self._info()

    def _forward(self) -> np.ndarray:
        """Recompute positions, contacts and contact forces from the state; the env's observation (n,)."""
        unwrapped = self._env.unwrapped
        mujoco.mj_forward(unwrapped.model, unwrapped.data)
        mujoco.mj_rnePostConstraint(unwrapped.model, unwrapped.data)  # contact forces, as gymnasium's step does
        return unwrapped._get_obs()

    def get_state(self) -> np.ndarray:
        """The full MuJoCo state (float64 vector; ``mjSTATE_INTEGRATION``)."""
        unwrapped = self._require_mujoco()
        return _get_mj_state(unwrapped.model, unwrapped.data)

    def set_state(self, state: np.ndarray) -> Observation:
        """Restore a state from ``get_state`` and return the observation there."""
        unwrapped = self._require_mujoco()
        _set_mj_state(unwrapped.model, unwrapped.data, state, self.env_id)
        self.steps, self._success = round(unwrapped.data.time / unwrapped.dt), False
        return self._observe(self._forward())

    def _require_mujoco(self) -> Any:
        if not self._mujoco:
            raise NotImplementedError(
                f"get_state/set_state need a MuJoCo-backed env (env.unwrapped.model, .data and ._get_obs); "
                f"{self.env_id} is {type(self._env.unwrapped).__name__}"
            )
        return self._env.unwrapped

    def render_camera_image(self, camera: str = "render", size: int | tuple[int, int] | None = None) -> np.ndarray:
        """``env.render()`` as uint8 (height, width, 3) at ``size`` (default ``image_size``)."""
        if camera != "render":
            raise ValueError(f"gymnasium envs have one camera, 'render'; found {camera!r}")
        renderer = getattr(self._env.unwrapped, "mujoco_renderer", None)
        viewer = getattr(renderer, "viewer", None)
        if viewer is not None:
            # Gymnasium makes a viewer's GL context current only when creating it; with several
            # envs (or any other renderer) in one thread another context is current: re-select it.
            viewer.make_context_current()
        frame = self._env.render()
        if viewer is None and getattr(renderer, "viewer", None) is not None:
            # Gymnasium aims its free camera at the median geom position of the first state it
            # renders, so images would depend on which episode rendered first: aim at the rest pose.
            if "lookat" not in (renderer.default_cam_config or {}):
                model = self._env.unwrapped.model
                rest = mujoco.MjData(model)
                mujoco.mj_forward(model, rest)
                renderer.viewer.cam.lookat[:] = np.median(rest.geom_xpos, axis=0)
            frame = self._env.render()
        frame = np.asarray(frame, dtype=np.uint8)
        _register_exit_hook()  # after the first GL context exists, so the hook runs before GL's own
        return resize_image(frame[..., :3], _size(size) if size is not None else self.image_size)

    def close(self) -> None:
        self._env.close()


class DmControlAdapter(_Adapter):
    """A dm_control suite task, named ``"<domain>-<task>"`` (e.g. ``"cartpole-swingup"``).

    ``state`` concatenates the task's observation entries, flattened, in spec order (see the
    feature's layout); cameras are model camera ids or names (``rgb/0`` for camera 0). Episodes
    end at ``max_steps`` (default: the task's time limit); a task termination sets ``terminated``.
    """

    def __init__(
        self,
        name: str,
        image_size: int | tuple[int, int] = 84,
        cameras: Sequence[int | str] = (0,),
        max_steps: int | None = None,
    ) -> None:
        from dm_control import suite
        from dm_control.rl.control import PhysicsError

        self._physics_error = PhysicsError
        domain, _, task = name.partition("-")
        if (domain, task) not in suite.ALL_TASKS:
            known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS)
            raise ValueError(f"unknown dm_control task {name!r}; expected <domain>-<task>, one of: {known}")
        self.name, self.image_size = name, _size(image_size)
        self._env = suite.load(domain, task, task_kwargs={"random": 0})
        self._physics = self._env.physics
        self._camera_ids = {str(camera): self._camera_id(camera) for camera in cameras}
        self.cameras = tuple(self._camera_ids)
        limit = max_steps or getattr(self._env, "_step_limit", float("inf"))
        if not np.isfinite(limit):
            raise ValueError(f"{name} has no time limit; pass max_steps")
        self.max_steps = int(round(limit))
        self._timestep = self._env.control_timestep()
        self._substeps = round(self._timestep / self._physics.timestep())
        self.control_rate = 1.0 / self._timestep
        spec = self._env.action_spec()
        low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float64)
        high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float64)
        layout = tuple((key, int(np.prod(s.shape)), "") for key, s in self._env.observation_spec().items())
        self._build(layout, low, high, name)
        self._warning, self._closed = "", False

    def _camera_id(self, camera: int | str) -> int:
        model = self._physics.model.ptr
        if isinstance(camera, str) and camera.lstrip("-").isdigit():
            camera = int(camera)
        named = isinstance(camera, str)
        camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) if named else camera
        if not (0 if named else -1) <= camera_id < model.ncam:
            known = [f"{i} ({model.camera(i).name})" for i in range(model.ncam)]
            raise ValueError(f"no camera {camera!r} in {self.name}; cameras: -1 (free), {', '.join(known)}")
        return camera_id

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        self._env.task.random.seed(self._begin_episode(seed))  # the task draws its initial state from this
        self._warning = ""
        return self._observe(self._env.reset().observation), self._info()

    def step(self, action: Any) -> StepResult:
        if self._warning:
            raise RuntimeError(f"the episode ended with a physics warning ({self._warning}); call reset() first")
        action = self.validate_action(action)
        task, physics = self._env.task, self._physics
        try:  # control.Environment.step without its step counter and automatic reset
            task.before_step(action, physics)
            physics.step(self._substeps)
            task.after_step(physics)
            physics.forward()
        except self._physics_error as error:
            self._warning = str(error)
        self.steps += 1
        terminated = bool(self._warning) or task.get_termination(physics) is not None
        reward = float(task.get_reward(physics) or 0.0) if not self._warning else 0.0
        observation = self._observe(task.get_observation(physics))
        return observation, reward, terminated, self.steps >= self.max_steps, self._info(self._warning)

    def _observe(self, observation: dict[str, Any]) -> Observation:
        return super()._observe(np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in observation.values()]))

    def get_state(self) -> np.ndarray:
        """The full MuJoCo state (float64 vector; ``mjSTATE_INTEGRATION``)."""
        return _get_mj_state(self._physics.model.ptr, self._physics.data.ptr)

    def set_state(self, state: np.ndarray) -> Observation:
        """Restore a state from ``get_state`` and return the observation there.

        Python-side task state (rare in the suite) is not part of the vector.
        """
        _set_mj_state(self._physics.model.ptr, self._physics.data.ptr, state, self.name)
        self.steps, self._warning = round(self._physics.data.time / self._timestep), ""
        return self._observe(self._env.task.get_observation(self._physics))

    def render_camera_image(self, camera: str | int, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """An RGB frame, uint8 (height, width, 3), from a camera id or name at ``size``."""
        camera_id = self._camera_ids.get(str(camera))
        if camera_id is None:
            camera_id = self._camera_ids[str(camera)] = self._camera_id(camera)
        height, width = _size(size) if size is not None else self.image_size
        return self._physics.render(height=height, width=width, camera_id=camera_id)  # dm_control frees its own GL

    def close(self) -> None:
        if not self._closed:  # free the GL contexts now: at exit the EGL display may already be gone
            self._closed = True
            self._env.close()
            self._physics.free()


def _reported_success(info: dict[str, Any]) -> bool:
    return bool(info.get("is_success", info.get("success", False)))


def _get_mj_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    state = np.empty(mujoco.mj_stateSize(model, STATE_SPEC))
    mujoco.mj_getState(model, data, state, STATE_SPEC)
    return state


def _set_mj_state(model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, name: str) -> None:
    state = np.asarray(state, dtype=np.float64)
    size = mujoco.mj_stateSize(model, STATE_SPEC)
    if state.shape != (size,):
        raise ValueError(f"state must have shape ({size},) for {name}, found {state.shape}; saved from another env?")
    mujoco.mj_setState(model, data, state, STATE_SPEC)
    mujoco.mj_forward(model, data)
