"""The one way pear-edge draws and writes a figure: matplotlib without a display, PNG written atomically."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed, nothing pops up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` as a PNG through a temporary sibling (see pear_edge.base.atomic), then close it."""
    from pear_edge.base.atomic import atomic_file

    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return Path(path)
