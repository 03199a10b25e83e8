"""Teleoperation devices: each turns what a person does into robolearn actions.

Every device has the same interface, ``poll(viewer_camera_yaw) -> (action, events)``:
``action`` is the [dx, dy, dz, dyaw, gripper] command in [-1, 1] for the next control
step, and ``events`` is a set drawn from ``EVENTS``. Motion is read in the frame of the
viewer's camera (forward = away from the viewer, in the horizontal plane) and turned into
world x/y by the camera's yaw, so "forward" on the device always moves the gripper away
from the viewer, however the view is turned. ``speed`` scales all motion.

The command keys (``COMMAND_KEYS``) work with every device: the session forwards the viewer's
key presses to ``on_key``, which runs on the viewer's thread; ``poll`` runs on the control loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np

from robolearn.envs.arm import MAX_TRANSLATION, MAX_YAW

EVENTS = frozenset({"start", "keep", "discard", "reset", "quit"})
INSTALL_HINT = "pip install 'robolearn[teleop]'"


class DeviceError(ValueError):
    """A device cannot be used; the message says what to install, plug in or allow.

    It is a ``ValueError`` so that ``robolearn record`` reports it in one line.
    """


class Key:
    """GLFW key codes, as the MuJoCo viewer's key callback passes them."""

    SPACE, Q, R, X, Z = 32, 81, 82, 88, 90
    ESCAPE, ENTER, BACKSPACE, DELETE = 256, 257, 259, 261
    RIGHT, LEFT, DOWN, UP, PAGE_UP, PAGE_DOWN, HOME = 262, 263, 264, 265, 266, 267, 268
    KP_ENTER, LEFT_SHIFT, RIGHT_SHIFT = 335, 340, 344


# The MuJoCo viewer binds every letter to a display toggle (Z lights, X textures, Q cameras, R
# reflections; the session undoes those four), Backspace to "reset the simulation" (the session
# undoes that too) and Left/Right to stepping, which is inert in the passive viewer we use.
COMMAND_KEYS = {Key.HOME: "start", Key.ENTER: "keep", Key.KP_ENTER: "keep", Key.DELETE: "discard"}
COMMAND_KEYS |= {Key.BACKSPACE: "discard", Key.R: "reset", Key.ESCAPE: "quit", Key.Q: "quit"}
COMMAND_HELP = (
    ("Space", "open / close the gripper"),
    ("Home", "start recording without moving"),
    ("Enter", "end the episode now and keep it"),
    ("Delete / Backspace", "discard the episode and redo it"),
    ("R", "discard and go to a new scene"),
    ("Esc / Q", "quit (kept episodes are saved)"),
)
MOTION_KEYS = {  # key: (axis, sign); axes: 0 forward, 1 left, 2 up, 3 yaw (counter-clockwise)
    **{Key.UP: (0, 1.0), Key.DOWN: (0, -1.0), Key.LEFT: (1, 1.0), Key.RIGHT: (1, -1.0)},
    **{Key.PAGE_UP: (2, 1.0), Key.PAGE_DOWN: (2, -1.0), Key.Z: (3, 1.0), Key.X: (3, -1.0)},
}
KEYBOARD_HELP = (
    ("Up / Down", "move away from / towards the view"),
    ("Left / Right", "move left / right"),
    ("PageUp / PageDown", "move up / down"),
    ("Z / X", "turn the hand left / right"),
    ("hold Shift", "move slowly"),
    *COMMAND_HELP,
)
"""The keyboard map, as the viewer overlay prints it."""


def camera_to_world(motion: np.ndarray, camera_yaw: float) -> np.ndarray:
    """[forward, left, up, yaw] in the viewer camera's frame -> [x, y, z, yaw] in the world frame."""
    c, s = math.cos(camera_yaw), math.sin(camera_yaw)
    forward, left = motion[0], motion[1]
    return np.array([c * forward - s * left, s * forward + c * left, motion[2], motion[3]])


class Device:
    """Base class: gripper toggle and command keys, shared by every device."""

    name = "device"
    help: tuple[tuple[str, str], ...] = COMMAND_HELP

    REPEAT_GAP = 0.25
    """A command key acts again only after this many seconds without a press: holding it acts once."""

    def __init__(self, speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError(f"--speed must be positive, found {speed}")
        self.speed, self.clock = float(speed), clock
        self._lock = threading.Lock()
        self._events: set[str] = set()
        self._last_command: dict[int, float] = {}
        self.gripper = -1.0

    def on_key(self, key: int) -> None:
        """A key press (or auto-repeat) in the viewer window; called on the viewer's thread."""
        now = self.clock()
        with self._lock:
            repeated = now - self._last_command.get(key, -math.inf) < self.REPEAT_GAP
            self._last_command[key] = now
            if repeated:
                return
            if key == Key.SPACE:
                self.gripper = -self.gripper
            elif key in COMMAND_KEYS:
                self._events.add(COMMAND_KEYS[key])

    def add_event(self, event: str) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {sorted(EVENTS)}")
        with self._lock:
            self._events.add(event)

    def take_events(self) -> set[str]:
        with self._lock:
            events, self._events = self._events, set()
        return events

    def attach(self, viewer: Any, env: Any) -> None:
        """Called once the viewer is open (the mouse device reads its perturbation)."""

    def reset(self) -> None:
        """A new episode starts: the gripper opens, as the arm's start posture has it."""
        with self._lock:
            self.gripper = -1.0

    def poll(self, viewer_camera_yaw: float) -> tuple[np.ndarray, set[str]]:
        """The action for the next control step and the events since the last poll."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _action(self, motion: np.ndarray, camera_yaw: float, scale: float = 1.0) -> np.ndarray:
        """An action from camera-frame motion [forward, left, up, yaw] in [-1, 1]."""
        action = np.empty(5)
        action[:4] = camera_to_world(np.asarray(motion, float), camera_yaw) * (self.speed * scale)
        action[4] = self.gripper
        return np.clip(action, -1.0, 1.0)


class KeyboardDevice(Device):
    """Arrow keys, PageUp/PageDown and Z/X in the viewer window (``KEYBOARD_HELP``).

    The viewer reports presses and auto-repeats, not releases, so each press moves the arm
    for ``hold`` seconds, renewed by the next repeat. When ``key_state`` can tell which keys
    are held (the session asks GLFW), a key moves the arm exactly while it is held, and a
    tap moves it for one control step.
    """

    name = "keyboard"
    help = KEYBOARD_HELP
    FRACTION = 0.5
    """Share of the full command a held key gives at speed 1 (1.5 cm per step, 30 cm/s)."""
    SLOW = 0.25
    """Factor while Shift is held, for fine positioning."""

    def __init__(
        self,
        speed: float = 1.0,
        hold: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
        key_state: Callable[[int], bool | None] | None = None,
    ) -> None:
        super().__init__(speed, clock)
        self.hold, self.key_state = hold, key_state
        self._pressed: dict[int, float] = {}
        self._tapped: set[int] = set()

    def on_key(self, key: int) -> None:
        if key in MOTION_KEYS or key in (Key.LEFT_SHIFT, Key.RIGHT_SHIFT):
            with self._lock:
                self._pressed[key] = self.clock()
                self._tapped.add(key)
        else:
            super().on_key(key)

    def _active(self, key: int, now: float, pressed: dict[int, float], tapped: set[int]) -> bool:
        if key in tapped:
            return True
        held = self.key_state(key) if self.key_state is not None else None
        if held is not None:
            return held
        return now - pressed.get(key, -math.inf) < self.hold

    def poll(self, viewer_camera_yaw: float) -> tuple[np.ndarray, set[str]]:
        now = self.clock()
        with self._lock:
            pressed, tapped, self._tapped = dict(self._pressed), self._tapped, set()
        motion = np.zeros(4)
        for key, (axis, sign) in MOTION_KEYS.items():
            if self._active(key, now, pressed, tapped):
                motion[axis] += sign
        slow = any(self._active(key, now, pressed, tapped) for key in (Key.LEFT_SHIFT, Key.RIGHT_SHIFT))
        scale = self.FRACTION * (self.SLOW if slow else 1.0)
        return self._action(motion, viewer_camera_yaw, scale), self.take_events()


class MouseDevice(Device):
    """Drag the robot's hand in the viewer: the gripper follows the dragged point.

    Double-click a part of the arm to select it, then Ctrl + right-drag to move it (Shift:
    in the horizontal plane) and Ctrl + left-drag to turn it. The viewer keeps the dragged
    reference in ``viewer.perturb``; the action drives the grabbed point towards it. The
    session removes the viewer's own perturbation forces, so only the action moves the arm.
    """

    name = "mouse"
    help = (
        ("double-click the arm", "select it"),
        ("Ctrl + right drag", "move the hand (+Shift: horizontally)"),
        ("Ctrl + left drag", "turn the hand"),
        *COMMAND_HELP,
    )
    GAIN = 0.5
    """Share of the remaining distance covered per control step (before clipping)."""

    def __init__(self, speed: float = 1.0) -> None:
        super().__init__(speed)
        self.perturb = None
        self.env = None

    def attach(self, viewer: Any, env: Any) -> None:
        self.perturb, self.env = viewer.perturb, env

    def poll(self, viewer_camera_yaw: float) -> tuple[np.ndarray, set[str]]:
        action = np.zeros(5)
        action[4] = self.gripper
        pert, env = self.perturb, self.env
        if pert is None or not pert.active or pert.select <= 0:
            return action, self.take_events()
        model, data = env.model, env.data
        body = int(pert.select)
        if model.body_rootid[body] != model.body_rootid[env.physics.arm.hand_body]:
            return action, self.take_events()  # not part of the arm: nothing to follow
        rotation = data.xmat[body].reshape(3, 3)
        scale = self.GAIN * self.speed
        if pert.active & mujoco.mjtPertBit.mjPERT_TRANSLATE:  # the reference point moved
            grabbed = data.xpos[body] + rotation @ np.asarray(pert.localpos)
            action[:3] = scale * (np.asarray(pert.refpos) - grabbed) / MAX_TRANSLATION
        if pert.active & mujoco.mjtPertBit.mjPERT_ROTATE:  # the reference orientation turned
            target = np.empty(9)
            mujoco.mju_quat2Mat(target, np.asarray(pert.refquat, float))
            relative = target.reshape(3, 3) @ rotation.T  # the turn still to make, in the world frame
            action[3] = scale * math.atan2(relative[1, 0], relative[0, 0]) / MAX_YAW
        return np.clip(action, -1.0, 1.0), self.take_events()


def _deadzone(value: float, zone: float) -> float:
    if abs(value) < zone:
        return 0.0
    return math.copysign((abs(value) - zone) / (1.0 - zone), value)


SPACEMOUSE_VENDORS = {0x256F: "3Dconnexion", 0x046D: "Logitech (older 3Dconnexion)"}
UDEV_RULE = (
    'KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0666"\n'
    'KERNEL=="hidraw*", ATTRS{idVendor}=="046d", ATTRS{idProduct}=="c6*", MODE="0666"'
)


class SpaceMouseDevice(Device):
    """A 3Dconnexion SpaceMouse, read through hidapi: push the cap where the gripper should go.

    Push forward/back, left/right and pull up/push down to move; twist to turn the hand.
    Left button: open / close the gripper; right button: end the episode and keep it.
    """

    name = "spacemouse"
    help = (
        ("push / pull the cap", "move the gripper"),
        ("twist the cap", "turn the hand"),
        ("left / right button", "gripper / keep"),
        *COMMAND_HELP[1:],
    )
    FULL_SCALE = 350.0
    DEADZONE = 0.08

    def __init__(self, speed: float = 1.0, hid_module: Any = None) -> None:
        super().__init__(speed)
        hid = hid_module if hid_module is not None else _import("hid", "hidapi")
        if not hasattr(hid, "device"):
            raise DeviceError("the installed 'hid' module is not hidapi's; run `pip uninstall hid` and " + INSTALL_HINT)
        found = [d for d in hid.enumerate() if d.get("vendor_id") in SPACEMOUSE_VENDORS]
        found = [d for d in found if d["vendor_id"] == 0x256F or "space" in str(d.get("product_string", "")).lower()]
        if not found:
            raise DeviceError(
                "no SpaceMouse found (USB vendor 256f 3Dconnexion, or 046d for older models); plug it in "
                "(the wireless receiver counts) and check that `lsusb` lists it"
            )
        info = found[0]
        self.device = hid.device()
        try:
            self.device.open_path(info["path"])
        except (OSError, ValueError) as error:
            raise DeviceError(_permission_message(info, error)) from error
        self.device.set_nonblocking(True)
        self.translation = np.zeros(3)
        self.rotation = np.zeros(3)
        self.buttons = 0

    def read_reports(self, limit: int = 64) -> None:
        """Apply every report waiting in the device's buffer."""
        for _ in range(limit):
            report = self.device.read(13)
            if not report:
                return
            self.apply_report(report)

    def apply_report(self, report) -> None:
        def axes(start: int) -> np.ndarray:
            raw = bytes(report[start : start + 6])
            values = np.frombuffer(raw, "<i2").astype(float) / self.FULL_SCALE
            return np.clip(values, -1.0, 1.0)

        kind = report[0]
        if kind == 1 and len(report) >= 7:
            self.translation = axes(1)
            if len(report) >= 13:  # newer models send rotation in the same report
                self.rotation = axes(7)
        elif kind == 2 and len(report) >= 7:
            self.rotation = axes(1)
        elif kind == 3 and len(report) >= 2:
            pressed = report[1] & ~self.buttons
            self.buttons = report[1]
            if pressed & 1:
                self.on_key(Key.SPACE)
            if pressed & 2:
                self.add_event("keep")

    def poll(self, viewer_camera_yaw: float) -> tuple[np.ndarray, set[str]]:
        self.read_reports()
        x, y, z = (_deadzone(v, self.DEADZONE) for v in self.translation)
        twist = _deadzone(self.rotation[2], self.DEADZONE)
        # HID axes: x right, y towards the user, z down; twist z clockwise seen from above.
        motion = np.array([-y, -x, -z, -twist])
        return self._action(motion, viewer_camera_yaw), self.take_events()

    def close(self) -> None:
        self.device.close()


def _permission_message(info: dict, error: Exception) -> str:
    path = info.get("path", b"")
    path = path.decode() if isinstance(path, bytes) else str(path)
    where = f"{path}: " if path else ""
    return (
        f"the SpaceMouse was found but could not be opened ({where}{error}). Usually your user may not "
        "read its /dev/hidraw node: add the udev rule\n"
        f"{UDEV_RULE}\n"
        "to /etc/udev/rules.d/99-spacemouse.rules, run `sudo udevadm control --reload-rules && sudo udevadm "
        "trigger`, then unplug and replug the device"
    )


class GamepadDevice(Device):
    """A gamepad through pygame (Xbox layout; other pads map their buttons in the same places).

    Left stick: move in the horizontal plane; right stick up/down: move up/down; right stick
    left/right: turn the hand; A: gripper; Start: keep; Back: discard and redo; Y: new scene;
    hold LB: move slowly.
    """

    name = "gamepad"
    help = (
        ("left stick", "move forward / back / left / right"),
        ("right stick", "up / down, turn the hand"),
        ("A / Start / Back / Y", "gripper / keep / redo / new scene"),
        ("hold LB", "move slowly"),
        *COMMAND_HELP[1:],
    )
    DEADZONE = 0.12
    BUTTONS = {0: "gripper", 7: "keep", 6: "discard", 3: "reset"}
    SLOW_BUTTON = 4

    def __init__(self, speed: float = 1.0, pygame_module: Any = None) -> None:
        super().__init__(speed)
        import os

        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # events without opening an SDL window
        pygame = pygame_module if pygame_module is not None else _import("pygame", "pygame")
        self.pygame = pygame
        pygame.display.init()
        pygame.joystick.init()
        if pygame.joystick.get_count() == 0:
            raise DeviceError(
                "no gamepad found; plug one in (check with `ls /dev/input/js*`), and if it is listed but "
                "not found, add your user to the 'input' group (`sudo usermod -aG input $USER`, then log in again)"
            )
        self.joystick = pygame.joystick.Joystick(0)
        self.joystick.init()
        self._was_pressed: set[int] = set()

    def _axis(self, index: int) -> float:
        if index >= self.joystick.get_numaxes():
            return 0.0
        return _deadzone(float(self.joystick.get_axis(index)), self.DEADZONE)

    def poll(self, viewer_camera_yaw: float) -> tuple[np.ndarray, set[str]]:
        self.pygame.event.pump()
        pressed = {i for i in range(self.joystick.get_numbuttons()) if self.joystick.get_button(i)}
        for button in pressed - self._was_pressed:
            command = self.BUTTONS.get(button)
            if command == "gripper":
                self.on_key(Key.SPACE)
            elif command is not None:
                self.add_event(command)
        self._was_pressed = pressed
        motion = np.array([-self._axis(1), -self._axis(0), -self._axis(4), -self._axis(3)])
        scale = 0.3 if self.SLOW_BUTTON in pressed else 1.0
        return self._action(motion, viewer_camera_yaw, scale), self.take_events()

    def close(self) -> None:
        self.pygame.joystick.quit()


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DeviceError(f"this device needs the '{package}' package: {INSTALL_HINT}") from error


DEVICES = {cls.name: cls for cls in (KeyboardDevice, MouseDevice, SpaceMouseDevice, GamepadDevice)}


def make_device(name: str, speed: float = 1.0) -> Device:
    """The teleoperation device called ``name`` (keyboard, mouse, spacemouse, gamepad)."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; devices: {', '.join(DEVICES)}")
    return DEVICES[name](speed=speed)
