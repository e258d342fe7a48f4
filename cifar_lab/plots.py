"""Matplotlib, set up once for every figure cifar_lab draws, and the per-run curves as in the seed's graphs."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # names and labels come from files: "$" is text, never mathtext
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cifar_lab.files import write_bytes_atomic  # noqa: E402


def png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def epoch_axis(ax: Axes, ylabel: str) -> None:
    """Whole epochs along x, ``ylabel`` up y, a light grid."""
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_curves(rows: list[dict[str, float]], out_dir: Path, title: str, synthetic: bool = False) -> list[Path]:
    """Write loss.png and accuracy.png (accuracy in percent) from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    suffix = " (SYNTHETIC data)" if synthetic else ""
    paths = []
    for key, label, scale in (("loss", "Loss", 1.0), ("acc", "Accuracy (%)", 100.0)):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split, style in (("train", "-"), ("val", "--")):
            values = [r[f"{split}_{key}"] * scale for r in rows]
            ax.plot(epochs, values, style, marker="." if len(rows) < 30 else None, label=split)
        epoch_axis(ax, label)
        ax.set_title(f"{title}: {label.split(' ')[0].lower()}{suffix}")
        ax.legend()
        fig.tight_layout()
        path = out_dir / ("loss.png" if key == "loss" else "accuracy.png")
        write_bytes_atomic(path, png(fig))  # never a half-written PNG
        paths.append(path)
    return paths
