"""Teleoperation: record demonstrations by driving the arm in MuJoCo's live viewer.

``robolearn record --device keyboard|mouse|spacemouse|gamepad`` runs
``session.record_with_device``; ``devices`` turns each device into actions. The viewer
module is imported only when a session starts, so this package imports without a display.
"""

from robolearn.teleop.devices import (
    DEVICES,
    Device,
    DeviceError,
    GamepadDevice,
    KeyboardDevice,
    MouseDevice,
    SpaceMouseDevice,
    make_device,
)

__all__ = [
    "DEVICES",
    "Device",
    "DeviceError",
    "GamepadDevice",
    "KeyboardDevice",
    "MouseDevice",
    "SpaceMouseDevice",
    "make_device",
]
