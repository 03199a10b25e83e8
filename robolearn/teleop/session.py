"""A teleoperation session: a person drives the arm in MuJoCo's live viewer; episodes are recorded.

The control loop runs on the main thread at the env's control rate (20 Hz). Each tick it
polls the device, then, holding the viewer's lock, steps the env and records the step, and
finally syncs the viewer, which draws on a thread of its own. Kept episodes are appended to
the store as soon as they finish, so closing the window, Ctrl-C or a crash lose at most the
episode in progress.

**Cameras and the viewer in one process.** ``mujoco.viewer.launch_passive`` opens a GLFW
window with its own GL context on a thread it starts. The env's cameras render offscreen
through ``mujoco.Renderer``, on this thread, each in its own context: a hidden GLFW window
with ``MUJOCO_GL=glfw`` (the default when there is a display) or an EGL context with
``MUJOCO_GL=egl``. A GL context is current per thread, so the two never meet; but GLFW's
window functions are not thread-safe, so every renderer must exist before the viewer starts.
The session therefore resets the env for its first episode, which renders every camera and so
creates the renderers, *before* it opens the viewer, and nothing creates a renderer later.
At the end the viewer is closed and its thread joined before anything is freed. Frames
recorded this way equal headless EGL frames pixel for pixel (``tests/test_teleop.py`` checks
it under Xvfb); ``--no-images`` records none, for the lowest latency.

**The viewer cannot change what is recorded.** Its mouse perturbations would push bodies,
Backspace resets the simulation, and its sliders set joints. Before every step the session
clears the perturbation forces and restores the last recorded state if anything else
changed, so every recorded transition comes from an action alone and replays exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass

import mujoco
import numpy as np

from robolearn.data.recorder import EpisodeRecorder
from robolearn.record import _check_seed, first_seed
from robolearn.teleop.devices import Device, DeviceError, KeyboardDevice, make_device

VIEW = {"lookat": (-0.02, 0.0, 0.08), "distance": 1.35, "azimuth": -35.0, "elevation": -45.0}
"""The viewer's starting camera: behind the robot's left shoulder, looking along +x and down."""
# Display toggles the viewer binds to the letters the command keys use (Z X Q: mjVIS flags,
# R: reflection); the session puts them back every tick.
_VIS_FLAGS = [
    int(mujoco.mjtVisFlag.mjVIS_LIGHT),
    int(mujoco.mjtVisFlag.mjVIS_TEXTURE),
    int(mujoco.mjtVisFlag.mjVIS_CAMERA),
]
_RENDER_FLAGS = [int(mujoco.mjtRndFlag.mjRND_REFLECTION)]


@dataclass
class TickStats:
    """Timing of the fixed-rate loop. A tick is late when it starts more than one period after its slot."""

    rate: float
    ticks: int = 0
    late: int = 0
    recording_ticks: int = 0
    recording_late: int = 0
    worst_lateness: float = 0.0
    """Seconds after its slot that the latest tick started."""
    busy_seconds: float = 0.0
    """Time spent inside ticks (device, step, render, record, sync)."""

    @property
    def late_fraction(self) -> float:
        return self.late / self.ticks if self.ticks else 0.0

    @property
    def recording_late_fraction(self) -> float:
        return self.recording_late / self.recording_ticks if self.recording_ticks else 0.0

    def add(self, lateness: float, recording: bool, busy: float) -> None:
        late = lateness > 1.0 / self.rate
        self.ticks += 1
        self.late += late
        self.recording_ticks += recording
        self.recording_late += late and recording
        self.worst_lateness = max(self.worst_lateness, lateness)
        self.busy_seconds += busy

    def summary(self) -> str:
        mean_busy = 1000 * self.busy_seconds / max(self.ticks, 1)
        return (
            f"control loop: {self.ticks} ticks at {self.rate:g} Hz, {self.late} late ({self.late_fraction:.1%}; "
            f"while recording {self.recording_late}/{self.recording_ticks}), worst {1000 * self.worst_lateness:.0f} ms "
            f"behind, {mean_busy:.1f} ms of work per tick"
        )


_last_stats: TickStats | None = None


def last_tick_stats() -> TickStats | None:
    """The loop timing of the latest session in this process (for benchmarks)."""
    return _last_stats


class _HeldKeys:
    """Which keys are held in the viewer window, asked of GLFW.

    The key callback runs on the viewer's thread with the viewer's window current, so the
    first key press tells us the window; GLFW keeps each window's key states, including
    releases, which the viewer's callback does not pass on.
    """

    def __init__(self, glfw, viewer) -> None:
        self.glfw, self.viewer, self.window = glfw, viewer, None

    def capture(self) -> None:
        if self.window is None:
            self.window = self.glfw.get_current_context() or None

    def __call__(self, key: int) -> bool | None:
        if self.window is None or self.viewer is None or not self.viewer.is_running():
            return None
        return self.glfw.get_key(self.window, key) == self.glfw.PRESS


class _XErrorEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("resourceid", ctypes.c_ulong),
        ("serial", ctypes.c_ulong),
        ("error_code", ctypes.c_ubyte),
        ("request_code", ctypes.c_ubyte),
        ("minor_code", ctypes.c_ubyte),
    ]


class _XErrors:
    """Keeps X errors from killing the process while the viewer is open.

    Xlib's default error handler prints the error and calls ``exit(1)``. When the viewer's
    window disappears under it (destroyed by another client, or torn down at exit), GL's
    next buffer swap fails with BadDrawable / GLXBadDrawable and the process would end there,
    before the summary and with a failure status. This handler counts the error instead; the
    control loop then ends the session as if the window had been closed. Committed episodes
    are safe either way.
    """

    def __init__(self) -> None:
        self.count, self.last = 0, ""
        self._library = self._callback = self._previous = None

    def install(self) -> None:
        try:
            library = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        except OSError:
            return  # no Xlib (Wayland): nothing to guard
        handler_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_XErrorEvent))
        library.XSetErrorHandler.argtypes = [ctypes.c_void_p]
        library.XSetErrorHandler.restype = ctypes.c_void_p
        self._library, self._callback = library, handler_type(self._on_error)
        self._previous = library.XSetErrorHandler(ctypes.cast(self._callback, ctypes.c_void_p))

    def _on_error(self, display, event) -> int:
        e = event.contents
        self.count += 1
        self.last = f"X error {e.error_code} (request {e.request_code}.{e.minor_code}, resource {e.resourceid:#x})"
        return 0

    def uninstall(self, display: int | None) -> None:
        """Restore the previous handler, after collecting the errors still queued for ``display``."""
        if self._library is not None:
            if display:  # errors arrive when the connection next syncs: let that be now, with us installed
                self._library.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
                self._library.XSync(display, 0)
            self._library.XSetErrorHandler(self._previous)
            self._library = None  # the callback object stays referenced: Xlib may hold it until now


class _Session:
    """Episode bookkeeping: ready (waiting for the first motion) -> recording -> (review) -> next."""

    def __init__(self, config, env, store, device: Device) -> None:
        self.config, self.env, self.store, self.device = config, env, store, device
        self.seed = first_seed(store, config.seed)
        self.kept = 0
        self.state = "ready"
        self.stop = False
        self.notice = ""
        self.ended_by = ""
        self.recorder: EpisodeRecorder | None = None
        self.expected: np.ndarray | None = None
        self.success_step: int | None = None

    def begin(self) -> None:
        _check_seed(self.seed)
        observation, _ = self.env.reset(seed=self.seed)
        self.recorder = EpisodeRecorder(self.env, observation, self.config.device)
        self.expected = self.env.get_state()
        self.state, self.success_step, self.ended_by = "ready", None, ""
        self.device.reset()

    def undo_viewer_edits(self) -> None:
        self.env.data.xfrc_applied[:] = 0.0  # mouse perturbation forces never reach the physics
        if not np.array_equal(self.env.get_state(), self.expected):
            self.env.set_state(self.expected)
            self.notice = "the viewer changed the simulation; undone"

    def tick(self, action: np.ndarray, events: set[str]) -> None:
        """One control step (under the viewer's lock)."""
        action = np.asarray(action, np.float32)  # as stored, so that replaying the stored actions is exact
        self.undo_viewer_edits()
        if "quit" in events:
            self.stop = True
            return
        if "discard" in events or "reset" in events:
            self.notice = "discarded; same scene again" if "discard" in events else "discarded; new scene"
            self._print(f"seed {self.seed}: {self.notice}")
            self.seed += "reset" in events
            self.begin()
            return
        if self.state == "review":
            if "keep" in events:
                self._finish(True)
            return
        if self.state == "ready":
            if not ("start" in events or np.any(action[:4] != 0) or action[4] != -1.0):
                return
            self.state, self.notice = "recording", ""
        if "keep" in events and len(self.recorder):
            self.ended_by = "keep key"
            self._finish(self.config.keep != "success" or self.recorder.success)
            return
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.recorder.step(action, observation, reward, info)
        self.expected = self.recorder.states[-1]
        if info["is_success"] and self.success_step is None:
            self.success_step = len(self.recorder)
        after_success = self.success_step is not None and (
            len(self.recorder) - self.success_step >= self.config.steps_after_success
        )
        if terminated or truncated or after_success:
            self.ended_by = "success" if after_success else ("physics warning" if terminated else "time limit")
            if self.config.keep == "ask":
                self.state = "review"
            else:
                self._finish(self.config.keep == "all" or self.recorder.success)

    def _finish(self, keep: bool) -> None:
        recorder, success = self.recorder, self.recorder.success
        if keep:
            path = self.store.append(recorder.finish(ended_by=self.ended_by, speed=self.config.speed))
            self.kept += 1
            self.notice = f"kept {path.name}"
            self.seed += 1
        else:
            self.notice = "not kept (no success; --keep success); same scene again"
        self._print(f"seed {recorder.env.episode_seed}: {len(recorder)} steps, success {success}, {self.notice}")
        if self.kept >= self.config.episodes:
            self.stop, self.state = True, "done"
        else:
            self.begin()

    def _print(self, line: str) -> None:
        print(f"[{self.kept}/{self.config.episodes}] {line}", flush=True)

    def status(self) -> tuple[str, str]:
        env, recorder = self.env, self.recorder
        state = {
            "ready": "READY: move to start recording",
            "recording": "RECORDING",
            "review": "KEEP? Enter keeps, Delete discards",
            "done": "DONE",
        }[self.state]
        seconds = len(recorder) / env.control_rate
        success = "yes" if env.is_success() else ("was reached" if recorder.success else "no")
        labels = "state\nepisode\ntime\nsuccess\nkept\n" + ("note" if self.notice else "")
        values = (
            f"{state}\nseed {self.seed}\n{seconds:.2f} / {env.max_steps / env.control_rate:.2f} s\n"
            f"{success}\n{self.kept} / {self.config.episodes} (keep {self.config.keep})\n{self.notice}"
        )
        return labels, values


def camera_yaw(viewer, data: mujoco.MjData) -> float:
    """The yaw (rad) of the viewer camera's horizontal viewing direction."""
    cam = viewer.cam
    if cam.type == mujoco.mjtCamera.mjCAMERA_FIXED and cam.fixedcamid >= 0:
        axes = data.cam_xmat[cam.fixedcamid].reshape(3, 3)
        forward = -axes[:, 2] if np.hypot(*axes[:2, 2]) > 0.1 else axes[:, 1]  # looking straight down: use "up"
        return math.atan2(forward[1], forward[0])
    return math.radians(cam.azimuth)


def _draw_gripper_marker(scene: mujoco.MjvScene, env, closed: bool) -> None:
    """A line from the gripper down to the table and a dot where it meets it, for depth."""
    position = env.physics.arm.gripper_position(env.data)
    floor = np.array([position[0], position[1], 0.001])
    rgba = np.array([0.9, 0.2, 0.2, 0.8] if closed else [0.2, 0.8, 0.3, 0.8], np.float32)
    scene.ngeom = 0
    if scene.maxgeom < 2:
        return
    mujoco.mjv_initGeom(scene.geoms[0], mujoco.mjtGeom.mjGEOM_LINE, np.zeros(3), np.zeros(3), np.eye(3).ravel(), rgba)
    mujoco.mjv_connector(scene.geoms[0], mujoco.mjtGeom.mjGEOM_LINE, 2.0, position, floor)
    size = np.array([0.008, 0.008, 0.0005])
    mujoco.mjv_initGeom(scene.geoms[1], mujoco.mjtGeom.mjGEOM_CYLINDER, size, floor, np.eye(3).ravel(), rgba)
    scene.ngeom = 2


def _x11_display(glfw) -> int | None:
    """GLFW's X connection (shared by the viewer and the hidden camera windows), if it has one."""
    try:
        display = glfw.get_x11_display()
    except Exception:  # not built for X11, or not initialised
        return None
    return ctypes.cast(display, ctypes.c_void_p).value if display else None


def _open_viewer_module():
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise DeviceError(
            "teleoperation opens the MuJoCo viewer, which needs a display (DISPLAY is not set); run it on a "
            "desktop, over `ssh -X`, or for a test under a virtual one: `xvfb-run -a robolearn record ...`"
        )
    import glfw
    import mujoco.viewer

    with warnings.catch_warnings():  # glfw also warns about the failure; one message is enough
        warnings.simplefilter("ignore")
        opened = glfw.init()
    if not opened:  # the viewer's thread would hang waiting for a window that never opens
        raise DeviceError(f"GLFW cannot open a window on display {os.environ.get('DISPLAY')!r}")
    return mujoco.viewer, glfw


def record_with_device(config, env, store) -> int:
    """Record until ``config.episodes`` episodes are kept, the window closes, Esc/Q or Ctrl-C; return how many were kept."""
    global _last_stats
    device = make_device(config.device, speed=config.speed)
    viewer, viewer_threads, stats = None, set(), TickStats(env.control_rate)
    _last_stats = stats
    session = _Session(config, env, store, device)
    previous_handler, x_errors, glfw = None, _XErrors(), None
    try:
        viewer_module, glfw = _open_viewer_module()
        session.begin()  # renders every camera once: the env's renderers exist before the viewer starts
        held = _HeldKeys(glfw, None)

        def on_key(key: int) -> None:  # on the viewer's thread
            held.capture()
            device.on_key(key)

        x_errors.install()
        before = set(threading.enumerate())
        viewer = viewer_module.launch_passive(
            env.model, env.data, key_callback=on_key, show_left_ui=False, show_right_ui=False
        )
        viewer_threads = set(threading.enumerate()) - before
        held.viewer = viewer
        if isinstance(device, KeyboardDevice):
            device.key_state = held
        device.attach(viewer, env)
        with viewer.lock():
            viewer.cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            viewer.cam.lookat[:] = VIEW["lookat"]
            for name in ("distance", "azimuth", "elevation"):
                setattr(viewer.cam, name, VIEW[name])
            flags = np.array(viewer.opt.flags), np.array(viewer.user_scn.flags)
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, _stop_on_interrupt(session))
        print(
            f"teleoperating {config.task} with the {device.name}: {config.episodes} episodes to keep "
            f"(keep {config.keep}), from seed {session.seed}",
            flush=True,
        )
        _loop(session, device, viewer, stats, flags, x_errors)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if viewer is not None:
            viewer.close()
            for thread in viewer_threads:
                thread.join(timeout=5)
        x_errors.uninstall(_x11_display(glfw))
        if x_errors.count:
            print(f"the viewer window went away ({x_errors.count} X errors, last: {x_errors.last})", flush=True)
        device.close()
        if session.state in ("recording", "review") and len(session.recorder):
            print(f"the episode in progress ({len(session.recorder)} steps) was not kept", flush=True)
        if stats.ticks:
            print(stats.summary(), flush=True)
    return session.kept


def _stop_on_interrupt(session: _Session):
    def handler(signum, frame) -> None:
        session.stop = True
        session.notice = "interrupted"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    return handler


def _loop(session: _Session, device: Device, viewer, stats: TickStats, flags, x_errors: _XErrors) -> None:
    period = 1.0 / session.env.control_rate
    vis_flags, render_flags = flags
    texts = None
    next_tick = time.perf_counter()
    while not session.stop and viewer.is_running() and not x_errors.count:
        now = time.perf_counter()
        if now < next_tick:
            time.sleep(next_tick - now)
            now = time.perf_counter()
        lateness = now - next_tick
        recording = session.state == "recording"
        with viewer.lock():
            action, events = device.poll(camera_yaw(viewer, session.env.data))
            session.tick(action, events)
            viewer.opt.flags[_VIS_FLAGS] = vis_flags[_VIS_FLAGS]
            viewer.user_scn.flags[_RENDER_FLAGS] = render_flags[_RENDER_FLAGS]
            _draw_gripper_marker(viewer.user_scn, session.env, device.gripper > 0)
        labels, values = session.status()
        if (labels, values) != texts:
            texts = labels, values
            keys = "\n".join(key for key, _ in device.help)
            meanings = "\n".join(meaning for _, meaning in device.help)
            viewer.set_texts(
                [
                    (None, mujoco.mjtGridPos.mjGRID_TOPLEFT, labels, values),
                    (mujoco.mjtFontScale.mjFONTSCALE_100, mujoco.mjtGridPos.mjGRID_BOTTOMLEFT, keys, meanings),
                ]
            )
        viewer.sync()
        stats.add(lateness, recording or session.state == "recording", time.perf_counter() - now)
        next_tick += period
        if time.perf_counter() - next_tick > period:  # fell behind: start again from now, no burst
            next_tick = time.perf_counter()
