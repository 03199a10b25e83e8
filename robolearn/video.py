"""Video files: H.264 mp4 that browsers and players open, written with the ffmpeg inside imageio-ffmpeg."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float = 20.0) -> Path:
    """Write uint8 RGB frames (height x width x 3, all the same size) to an H.264 mp4.

    Odd sizes are padded by one pixel (yuv420p needs even sides). The file is written
    under a temporary name and renamed, so a crash never leaves a half-written video.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.mp4")
    writer = None
    count = 0
    try:
        for frame in frames:
            frame = _even(np.asarray(frame))
            if writer is None:
                height, width = frame.shape[:2]
                import imageio_ffmpeg  # imported here: only writing or reading a video needs ffmpeg

                writer = imageio_ffmpeg.write_frames(
                    str(partial),
                    (width, height),
                    fps=fps,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    quality=7,
                    macro_block_size=1,
                    output_params=["-movflags", "+faststart"],
                    ffmpeg_log_level="error",
                )
                writer.send(None)
            elif frame.shape[:2] != (height, width):
                raise ValueError(f"frame {count} is {frame.shape[:2]}, the video is {(height, width)}")
            writer.send(np.ascontiguousarray(frame))
            count += 1
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    if count == 0:
        raise ValueError(f"no frames to write to {path}")
    partial.replace(path)
    return path


def read_mp4(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode a video into uint8 frames (n x height x width x 3) and ffmpeg's metadata."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
    return np.stack(frames), meta


def tile(frames: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Arrange equally sized frames in a grid, row by row; missing cells are black."""
    rows = -(-len(frames) // columns)
    height, width = frames[0].shape[:2]
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = frame
    return grid


def border(frame: np.ndarray, rgb: Sequence[int], width: int = 3) -> np.ndarray:
    """A copy of the frame with a coloured border (green for success, say)."""
    framed = frame.copy()
    framed[:width], framed[-width:], framed[:, :width], framed[:, -width:] = rgb, rgb, rgb, rgb
    return framed


def _even(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be uint8 height x width x 3, found {frame.dtype} {frame.shape}")
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
    return frame
