import numpy as np
import pytest

from robolearn.video import read_mp4, tile, write_mp4


def test_mp4_round_trip_odd_sizes(tmp_path):
    frames = [np.full((31, 45, 3), 20 * i, np.uint8) for i in range(10)]
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    decoded, meta = read_mp4(path)
    assert meta["codec"] == "h264" and meta["fps"] == 10
    assert decoded.shape == (10, 32, 46, 3)
    assert abs(int(decoded[5, 10, 10, 0]) - 100) < 8
    assert not list(tmp_path.glob("*.partial*"))


def test_mismatched_frames_and_empty_videos_are_errors(tmp_path):
    with pytest.raises(ValueError, match="frame 1"):
        write_mp4(tmp_path / "bad.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "float.mp4", [np.zeros((8, 8, 3))])
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_tile_places_frames_row_by_row():
    frames = [np.full((2, 3, 3), i + 1, np.uint8) for i in range(3)]
    grid = tile(frames, columns=2)
    assert grid.shape == (4, 6, 3)
    assert grid[0, 0, 0] == 1 and grid[0, 3, 0] == 2 and grid[2, 0, 0] == 3 and grid[2, 3, 0] == 0
