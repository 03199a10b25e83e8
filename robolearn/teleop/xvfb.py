"""A virtual X display (Xvfb) for running the live viewer on a headless machine: tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator


class NoDisplayServer(RuntimeError):
    """Xvfb is not installed or did not start."""


@contextlib.contextmanager
def virtual_display(size: str = "1280x1024x24", timeout: float = 15.0) -> Iterator[str]:
    """Start Xvfb on a free display number and yield its name (":N"); stop it afterwards."""
    if not shutil.which("Xvfb"):
        raise NoDisplayServer("Xvfb is not installed (apt-get install xvfb)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", size, "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        number, deadline = b"", time.monotonic() + timeout
        while not number.endswith(b"\n") and time.monotonic() < deadline:  # written once the server is ready
            if select.select([read_end], [], [], 0.5)[0]:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        if not number.endswith(b"\n") or server.poll() is not None:
            raise NoDisplayServer("Xvfb did not start")
        yield f":{number.decode().strip()}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        os.close(read_end)  # only now: Xvfb dies if it cannot finish writing the number
