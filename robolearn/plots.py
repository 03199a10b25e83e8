"""Learning curves as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

Runs = list[tuple[list[float], list[float]]]
"""One (x, y) series per run (seed)."""


def plot_curves(
    path: Path,
    *panels: dict[str, Runs],
    ylabels: tuple[str, ...] = (),
    title: str = "",
    xlabel: str = "environment steps",
) -> None:
    """One panel per dict; per label, the mean over runs as a line and its spread (min to max) shaded.

    Runs may be measured at different x; they are interpolated onto the union of their x values
    within the range every run covers.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for index, (axis, panel) in enumerate(zip(axes[0], panels)):
        for label, runs in panel.items():
            grid, values = _common_grid(runs)
            mean = values.mean(0)
            (line,) = axis.plot(grid, mean, label=label if len(runs) == 1 else f"{label} (n={len(runs)})")
            if len(runs) > 1:
                axis.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabels[index] if index < len(ylabels) else next(iter(panel)))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10, wrap=True)
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(path.name + ".partial.png")
    figure.savefig(temporary, dpi=100)
    pyplot.close(figure)
    temporary.replace(path)


def _common_grid(runs: Runs) -> tuple[np.ndarray, np.ndarray]:
    if len(runs) == 1:
        x, y = runs[0]
        return np.asarray(x, float), np.asarray([y], float)
    end = min(max(x) for x, _ in runs)
    grid = np.unique(np.concatenate([np.asarray(x, float) for x, _ in runs]))
    grid = grid[grid <= end]
    return grid, np.stack([np.interp(grid, np.asarray(x, float), np.asarray(y, float)) for x, y in runs])
