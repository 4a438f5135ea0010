"""Charts as PNG files, drawn without a display (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend; imported on first use (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int | None = None) -> None:
    """Lay out, write (to a temporary sibling, then rename) and close `fig`."""
    plt = pyplot()
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.tight_layout()
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
