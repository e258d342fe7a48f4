"""Per-run curves, as in the seed's graphs: train against val, per epoch."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label.split(' ')[0].lower()}{suffix}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / ("loss.png" if key == "loss" else "accuracy.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
