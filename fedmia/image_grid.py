"""Image pairs on a grid: what an attack or a generator produced above what it stands for
(a reconstruction over its ground truth, a synthetic sample over its nearest record)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Pairs to a band of the grid.
COLUMNS = 8


def displayable(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow draws: (H, W) for one channel, (H, W, C) for colour."""
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0)).clip(0, 1)


def pair_grid(upper: np.ndarray, lower: np.ndarray, titles: list[str], caption: str, path: Path | str) -> Path:
    """A PNG of each `upper[i]` above `lower[i]`, titled `titles[i]`, COLUMNS pairs to a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(COLUMNS, len(upper)))
    bands = max(1, -(-len(upper) // columns))
    figure, axes = plt.subplots(2 * bands, columns, figsize=(1.2 * columns, 2.6 * bands), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for slot, (top_image, bottom_image, title) in enumerate(zip(upper, lower, titles)):
        band, column = divmod(slot, columns)
        top, bottom = axes[2 * band, column], axes[2 * band + 1, column]
        top.imshow(displayable(top_image), cmap="gray", vmin=0, vmax=1)
        top.set_title(title, fontsize=8)
        bottom.imshow(displayable(bottom_image), cmap="gray", vmin=0, vmax=1)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    output = Path(path)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
