"""Matplotlib, set up once for every figure cifar_lab draws, and the per-run curves as in the seed's graphs."""

from __future__ import annotations

import io
from collections.abc import Sequence
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


SHORT = 12  # up to this many epochs: a tick on every epoch
MARKERS = {"train": "o", "val": "s"}  # train and val apart in shape too, not only in line style


def marker(split: str, epochs: int) -> str | None:
    """The marker of ``split``'s points where there are few enough to see (a one-epoch curve is one point)."""
    return MARKERS[split] if epochs < 30 else None


def epoch_axis(ax: Axes, ylabel: str, epochs: Sequence[float] = ()) -> None:
    """Whole epochs along x, ``ylabel`` up y, a light grid. A short run (``epochs``: the epochs drawn) gets a
    tick on each epoch and half an epoch of margin, so one epoch is a point at 1, not at 0.945…1.050."""
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and max(epochs) - min(epochs) < SHORT:
        first, last = int(min(epochs)), int(max(epochs))
        ax.set_xticks(range(first, last + 1))
        ax.set_xlim(first - 0.5, last + 0.5)
    ax.grid(alpha=0.3)


def plot_curves(rows: list[dict[str, float]], out_dir: Path, title: str, synthetic: bool = False) -> list[Path]:
    """Write loss.png and accuracy.png (accuracy in percent) from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    suffix = " (SYNTHETIC data)" if synthetic else ""
    paths = []
    for key, label, scale in (("loss", "Loss", 1.0), ("acc", "Accuracy (%)", 100.0)):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split, style, colour in (("train", "-", "tab:blue"), ("val", "--", "tab:orange")):
            values = [r[f"{split}_{key}"] * scale for r in rows]
            ax.plot(epochs, values, style, color=colour, marker=marker(split, len(rows)), label=split)
        epoch_axis(ax, label, epochs)
        ax.set_title(f"{title}: {label.split(' ')[0].lower()}{suffix}")
        ax.legend()
        fig.tight_layout()
        path = out_dir / ("loss.png" if key == "loss" else "accuracy.png")
        write_bytes_atomic(path, png(fig))  # never a half-written PNG
        paths.append(path)
    return paths
