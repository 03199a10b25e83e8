"""Teleoperation: devices without a display, the session's bookkeeping, and a real GUI session under Xvfb."""

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mujoco
import numpy as np
import pytest

from robolearn import make
from robolearn.data.store import DemoStore
from robolearn.envs.arm import MAX_YAW
from robolearn.record import RecordConfig
from robolearn.teleop import DeviceError, GamepadDevice, KeyboardDevice, MouseDevice, SpaceMouseDevice, make_device
from robolearn.teleop.devices import KEYBOARD_HELP, Key
from robolearn.teleop.session import TickStats, _Session, camera_yaw
from robolearn.teleop.xvfb import NoDisplayServer, virtual_display

ROBOLEARN = str(Path(sys.executable).with_name("robolearn"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ keyboard
def test_keyboard_key_maps_to_camera_frame_action():
    keyboard = KeyboardDevice(clock=Clock())
    keyboard.on_key(Key.UP)
    action, events = keyboard.poll(0.0)  # camera looking along +x: "away from the view" is +x
    np.testing.assert_allclose(action, [KeyboardDevice.FRACTION, 0, 0, 0, -1])
    assert events == set()
    keyboard.on_key(Key.UP)
    action, _ = keyboard.poll(math.pi / 2)  # camera looking along +y
    np.testing.assert_allclose(action[:2], [0, KeyboardDevice.FRACTION], atol=1e-12)
    keyboard.on_key(Key.LEFT)
    action, _ = keyboard.poll(math.pi / 2)  # left of a camera looking along +y is -x
    np.testing.assert_allclose(action[:2], [-KeyboardDevice.FRACTION, KeyboardDevice.FRACTION], atol=1e-12)
    for key, axis, sign in ((Key.PAGE_UP, 2, 1), (Key.PAGE_DOWN, 2, -1), (Key.Z, 3, 1), (Key.X, 3, -1)):
        keyboard = KeyboardDevice(clock=Clock())
        keyboard.on_key(key)
        action, _ = keyboard.poll(1.0)  # z and yaw do not depend on the view
        assert action[axis] == sign * KeyboardDevice.FRACTION and np.count_nonzero(action[:4]) == 1


def test_keyboard_press_decays_unless_repeated():
    clock = Clock()
    keyboard = KeyboardDevice(clock=clock, hold=0.15)
    keyboard.on_key(Key.DOWN)
    clock.now += 0.1
    assert keyboard.poll(0.0)[0][0] < 0
    clock.now += 0.04  # 0.14 s after the press: still moving
    assert keyboard.poll(0.0)[0][0] < 0
    clock.now += 0.02  # 0.16 s: stopped
    assert keyboard.poll(0.0)[0][0] == 0
    keyboard.on_key(Key.DOWN)
    for _ in range(5):  # auto-repeat every 0.05 s keeps it going
        clock.now += 0.05
        keyboard.on_key(Key.DOWN)
        assert keyboard.poll(0.0)[0][0] < 0


def test_keyboard_held_state_stops_at_release_but_a_tap_moves_once():
    held = {Key.UP: False}
    keyboard = KeyboardDevice(clock=Clock(), key_state=lambda key: held.get(key, False))
    keyboard.on_key(Key.UP)
    assert keyboard.poll(0.0)[0][0] > 0  # the tap counts once
    assert keyboard.poll(0.0)[0][0] == 0  # released: no decay needed
    held[Key.UP] = True
    assert keyboard.poll(0.0)[0][0] > 0


def test_keyboard_speed_shift_gripper_and_commands():
    keyboard = KeyboardDevice(speed=4.0, clock=Clock())
    keyboard.on_key(Key.UP)
    assert keyboard.poll(0.0)[0][0] == 1.0  # clipped to the action range
    keyboard = KeyboardDevice(clock=Clock())
    keyboard.on_key(Key.LEFT_SHIFT)
    keyboard.on_key(Key.UP)
    assert keyboard.poll(0.0)[0][0] == pytest.approx(KeyboardDevice.FRACTION * KeyboardDevice.SLOW)
    keyboard.on_key(Key.SPACE)
    for key in (Key.ENTER, Key.DELETE, Key.R, Key.ESCAPE, Key.HOME):
        keyboard.on_key(key)
    action, events = keyboard.poll(0.0)
    assert action[4] == 1.0 and events == {"keep", "discard", "reset", "quit", "start"}
    assert keyboard.poll(0.0)[1] == set()  # events are delivered once
    keyboard.reset()
    assert keyboard.poll(0.0)[0][4] == -1.0
    assert any("Z / X" in keys for keys, _ in KEYBOARD_HELP)


def test_held_command_key_acts_once():
    clock = Clock()
    keyboard = KeyboardDevice(clock=clock)
    for _ in range(10):  # Space held: a press, then auto-repeats every 0.04 s
        keyboard.on_key(Key.SPACE)
        clock.now += 0.04
    assert keyboard.poll(0.0)[0][4] == 1.0
    clock.now += 0.3
    keyboard.on_key(Key.SPACE)  # a new press
    assert keyboard.poll(0.0)[0][4] == -1.0


def test_camera_yaw_of_free_and_fixed_cameras():
    env = make("reach", cameras=())
    env.reset(seed=0)
    free = SimpleNamespace(type=mujoco.mjtCamera.mjCAMERA_FREE, azimuth=90.0, fixedcamid=-1)
    assert camera_yaw(SimpleNamespace(cam=free), env.data) == pytest.approx(math.pi / 2)
    front = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, "front")
    fixed = SimpleNamespace(type=mujoco.mjtCamera.mjCAMERA_FIXED, azimuth=0.0, fixedcamid=front)
    assert abs(camera_yaw(SimpleNamespace(cam=fixed), env.data)) == pytest.approx(math.pi)  # it looks along -x


# ------------------------------------------------------------- other devices
def test_mouse_device_moves_the_grabbed_point_towards_the_dragged_reference():
    env = make("reach", cameras=())
    env.reset(seed=0)
    hand = env.physics.arm.hand_body
    perturb = SimpleNamespace(active=0, select=hand, localpos=np.zeros(3), refpos=np.zeros(3), refquat=np.zeros(4))
    mouse = MouseDevice()
    mouse.attach(SimpleNamespace(perturb=perturb), env)
    assert not mouse.poll(0.0)[0][:4].any()  # nothing dragged
    perturb.active = int(mujoco.mjtPertBit.mjPERT_TRANSLATE)  # Ctrl + right drag
    perturb.refpos = env.data.xpos[hand] + [0.0, 0.01, 0.0]
    action, _ = mouse.poll(0.0)
    assert action[1] > 0 and abs(action[0]) < 1e-9 and action[3] == 0
    perturb.active = int(mujoco.mjtPertBit.mjPERT_ROTATE)  # Ctrl + left drag, turned 0.1 rad anticlockwise
    mujoco.mju_mulQuat(perturb.refquat, [math.cos(0.05), 0, 0, math.sin(0.05)], env.data.xquat[hand])
    action, _ = mouse.poll(0.0)
    assert action[3] == pytest.approx(MouseDevice.GAIN * 0.1 / MAX_YAW) and not action[:3].any()
    perturb.select = env.model.body("goal").id  # not the arm: ignored
    assert not mouse.poll(0.0)[0][:4].any()


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "hid", None)
    monkeypatch.setitem(sys.modules, "pygame", None)
    for name in ("spacemouse", "gamepad"):
        with pytest.raises(DeviceError, match=r"pip install 'robolearn\[teleop\]'"):
            make_device(name)
    with pytest.raises(DeviceError, match="unknown device"):
        make_device("joystick")


class FakeHid:
    def __init__(self, devices, open_error=None, reports=()):
        self.devices, self.open_error, self.reports = devices, open_error, list(reports)

    def enumerate(self):
        return self.devices

    def device(self):
        fake = self

        class Device:
            def open_path(self, path):
                if fake.open_error:
                    raise fake.open_error

            def set_nonblocking(self, flag):
                pass

            def read(self, size):
                return fake.reports.pop(0) if fake.reports else []

            def close(self):
                pass

        return Device()


SPACEMOUSE = {
    "vendor_id": 0x256F,
    "product_id": 0xC635,
    "path": b"/dev/hidraw7",
    "product_string": "SpaceMouse Compact",
}


def test_spacemouse_errors_say_what_is_missing():
    with pytest.raises(DeviceError, match="no SpaceMouse found.*256f"):
        SpaceMouseDevice(hid_module=FakeHid([]))
    with pytest.raises(DeviceError, match=r"(?s)/dev/hidraw7.*open failed.*256f.*/etc/udev/rules.d") as info:
        SpaceMouseDevice(hid_module=FakeHid([SPACEMOUSE], open_error=OSError("open failed")))
    assert 'ATTRS{idVendor}=="256f"' in str(info.value)
    with pytest.raises(DeviceError, match="pip uninstall hid"):
        SpaceMouseDevice(hid_module=SimpleNamespace())


def test_spacemouse_reports_become_actions():
    def report(kind, *values):
        return [kind, *np.array(values, "<i2").tobytes()]

    pushed_forward_twisted = report(1, 0, -350, 0, 0, 0, -350)  # y away from the user; twist anticlockwise
    device = SpaceMouseDevice(hid_module=FakeHid([SPACEMOUSE], reports=[pushed_forward_twisted, [3, 1]]))
    action, events = device.poll(0.0)
    assert action[0] == pytest.approx(1.0) and action[3] == pytest.approx(1.0) and action[1] == 0
    assert action[4] == 1.0  # the left button closed the gripper
    device.apply_report([3, 3])
    assert device.poll(0.0)[1] == {"keep"}


def test_gamepad_without_a_pad_and_with_one():
    class Joystick:
        def __init__(self, index):
            self.axes, self.buttons = [0.0] * 6, [0] * 11

        def init(self):
            pass

        def get_numaxes(self):
            return len(self.axes)

        def get_axis(self, i):
            return self.axes[i]

        def get_numbuttons(self):
            return len(self.buttons)

        def get_button(self, i):
            return self.buttons[i]

    def fake_pygame(count):
        joystick = SimpleNamespace(init=lambda: None, get_count=lambda: count, Joystick=Joystick, quit=lambda: None)
        return SimpleNamespace(
            display=SimpleNamespace(init=lambda: None), joystick=joystick, event=SimpleNamespace(pump=lambda: None)
        )

    with pytest.raises(DeviceError, match="no gamepad found"):
        GamepadDevice(pygame_module=fake_pygame(0))
    pad = GamepadDevice(pygame_module=fake_pygame(1))
    pad.joystick.axes[1] = -1.0  # left stick pushed forward
    pad.joystick.buttons[0] = pad.joystick.buttons[7] = 1  # A and Start
    action, events = pad.poll(0.0)
    assert action[0] == pytest.approx(1.0) and action[4] == 1.0 and events == {"keep"}
    assert pad.poll(0.0)[1] == set()  # a held button fires once


# ------------------------------------------------------------------- session
def test_session_bookkeeping_ask_keep_and_viewer_edits_undone(tmp_path):
    config = RecordConfig(task="reach", device="keyboard", out=tmp_path / "d", episodes=1, keep="ask", no_images=True)
    env = make("reach", **config.env_kwargs())
    with DemoStore.create(config.out, env, "reach", config.env_kwargs()) as store:
        session = _Session(config, env, store, KeyboardDevice())
        session.begin()
        still = np.zeros(5)
        still[4] = -1
        session.tick(still, set())
        assert session.state == "ready" and env.steps == 0  # nothing happens until the person moves
        session.tick(np.array([0.5, 0, 0, 0, -1]), set())
        assert session.state == "recording" and env.steps == 1
        mujoco.mj_resetData(env.model, env.data)  # what the viewer's Backspace does
        session.tick(np.array([0.5, 0, 0, 0, -1]), set())
        assert session.notice.startswith("the viewer changed") and env.steps == 2
        while session.state == "recording":
            session.tick(np.array([0.0, 0.0, 0.1, 0, -1]), set())
        assert session.state == "review" and len(store) == 0  # --keep ask waits for the person
        session.tick(still, {"keep"})
        assert session.stop and len(store) == 1
    episode = store.load(0)
    assert episode.info["ended_by"] == "time limit" and len(episode) == env.max_steps
    env.set_state(episode.states[0])  # the reset the viewer did never reached the recording
    for action, state in zip(episode.actions, episode.states[1:]):
        env.step(action)
        np.testing.assert_array_equal(env.get_state(), state)


def test_tick_stats_count_ticks_that_start_a_period_late():
    stats = TickStats(rate=20)
    for lateness in (0.0, 0.01, 0.049, 0.051, 0.2):
        stats.add(lateness, recording=True, busy=0.01)
    assert (stats.ticks, stats.late, stats.late_fraction) == (5, 2, 0.4)
    assert "2 late" in stats.summary()


# --------------------------------------------------------------- real GUI
def _have_x_tools() -> bool:
    if shutil.which("Xvfb") and shutil.which("xdotool"):
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool"
        subprocess.run(install, shell=True, capture_output=True, timeout=600)
    return bool(shutil.which("Xvfb") and shutil.which("xdotool"))


@pytest.fixture(scope="module")
def xdisplay():
    if not _have_x_tools():
        pytest.skip("Xvfb and xdotool are not installed and could not be installed (apt-get install xvfb xdotool)")
    try:
        with virtual_display() as display:
            yield display
    except NoDisplayServer as error:
        pytest.skip(str(error))


def _xdotool(display: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISPLAY": display}
    return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=30, check=check)


def test_keyboard_session_in_a_real_viewer(xdisplay, tmp_path):
    out = tmp_path / "demos"
    env = {**os.environ, "DISPLAY": xdisplay, "MUJOCO_GL": "glfw"}
    command = [ROBOLEARN, "record", "--task", "reach", "--device", "keyboard", "--out", str(out)]
    command += ["--episodes", "2", "--keep", "all"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 40
        while not (found := _xdotool(xdisplay, "search", "--name", "MuJoCo", check=False).stdout.split()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=10)[0]
            time.sleep(0.2)
        while _xdotool(xdisplay, "windowfocus", "--sync", found[0], check=False).returncode != 0:
            assert time.monotonic() < deadline, "could not focus the viewer window"
            time.sleep(0.2)  # not viewable yet
        time.sleep(0.5)

        def press(*keys: str, pause: float = 0.15) -> None:  # several 20 Hz ticks per key, even on a loaded machine
            for key in keys:
                _xdotool(xdisplay, "key", key)
                time.sleep(pause)

        press("Up", "Up", "BackSpace")  # the viewer's own reset on Backspace is undone; the episode restarts
        press("Up", "Up", "Up", "Left", "Left", "Page_Up", "z", "space", "Up")
        _xdotool(xdisplay, "keydown", "Right")
        time.sleep(0.5)
        _xdotool(xdisplay, "keyup", "Right")
        press("Return", pause=1.0)  # keep the first episode
        press("Escape")  # quit before the second
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "kept 1 episodes" in output and "control loop:" in output, output
    store = DemoStore(out)
    assert len(store) == 1
    episode = store.load(0)
    assert episode.info["device"] == "keyboard" and episode.info["ended_by"] in ("keep key", "success")
    actions = episode.actions  # Up, Left, PageUp, Z, Space and a held Right all arrived
    assert len(episode) >= 6 and (actions[:, 0] > 0).any() and (actions[:, 2] > 0).any()
    assert (actions[:, 3] > 0).any() and (actions[:, 4] == 1).any() and (actions[:, 0] < 0).any()
    # Frames rendered next to the live viewer equal headless frames of the same state.
    headless = make("reach", cameras=("front", "wrist"), image_size=84)
    observation = headless.set_state(episode.states[0])
    np.testing.assert_array_equal(observation["rgb/front"], episode.observations["rgb/front"][0])
    np.testing.assert_array_equal(observation["rgb/wrist"], episode.observations["rgb/wrist"][0])
    headless.close()
