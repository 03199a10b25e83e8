"""A tiny bitmap font for labelling video frames (episode, step, outcome) without extra dependencies."""

from __future__ import annotations

import numpy as np

# 3x5 glyphs, one string of 15 bits per character, row by row.
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    "a": "010101111101101",
    "b": "110101110101110",
    "c": "011100100100011",
    "d": "110101101101110",
    "e": "111100110100111",
    "f": "111100110100100",
    "g": "011100101101011",
    "h": "101101111101101",
    "i": "111010010010111",
    "k": "101101110101101",
    "l": "100100100100111",
    "m": "101111111101101",
    "n": "110101101101101",
    "o": "010101101101010",
    "p": "110101110100100",
    "r": "110101110101101",
    "s": "011100010001110",
    "t": "111010010010010",
    "u": "101101101101111",
    "v": "101101101101010",
    "w": "101101111111101",
    "x": "101101010101101",
    "y": "101101010010010",
    "-": "000000111000000",
    ".": "000000000000010",
    ":": "000010000010000",
    "/": "001001010100100",
    "%": "101001010100101",
    " ": "000000000000000",
}
_BITMAPS = {char: np.array([int(b) for b in bits], bool).reshape(5, 3) for char, bits in _GLYPHS.items()}


def draw_text(frame: np.ndarray, text: str, scale: int = 1, position: tuple[int, int] = (2, 2)) -> np.ndarray:
    """A copy of ``frame`` with white ``text`` on a dark strip at ``position`` (row, column).

    Characters without a glyph are drawn as spaces; upper case is drawn as lower case.
    """
    out = frame.copy()
    row, column = position
    height, width = 5 * scale, 4 * scale * len(text) + scale
    out[row : row + height + 2 * scale, column : column + width] //= 3
    for i, char in enumerate(text.lower()):
        glyph = np.kron(_BITMAPS.get(char, _BITMAPS[" "]), np.ones((scale, scale), bool))
        top, left = row + scale, column + scale + 4 * scale * i
        region = out[top : top + glyph.shape[0], left : left + glyph.shape[1]]
        region[glyph[: region.shape[0], : region.shape[1]]] = 255
    return out
