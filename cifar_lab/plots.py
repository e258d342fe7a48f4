"""Per-run curves, as in the seed's graphs: train against val, per epoch."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # names and labels come from files: "$" is text, never mathtext
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cifar_lab.files import write_bytes_atomic  # noqa: E402


def plot_curves(rows: list[dict[str, float]], out_dir: Path, title: str, synthetic: bool = False) -> list[Path]:
    """Write loss.png and accuracy.png (accuracy in percent) from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    suffix = " (SYNTHETIC data)" if synthetic else ""
    paths = []
    for key, label, scale in (("loss", "Loss", 1.0), ("acc", "Accuracy (%)", 100.0)):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(
                epochs,
                [r[f"{split}_{key}"] * scale for r in rows],
                style,
                marker="." if len(rows) < 30 else None,
                label=split,
            )
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label.split(' ')[0].lower()}{suffix}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / ("loss.png" if key == "loss" else "accuracy.png")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        write_bytes_atomic(path, buffer.getvalue())  # never a half-written PNG
        paths.append(path)
    return paths
