"""The report's figures as PNG bytes: one per experiment (all its variants) and two overlays."""

from __future__ import annotations

from cifar_lab.plots import Axes, epoch_axis, marker, plt, png
from cifar_lab.report.aggregate import Group

MAX_LINES = 10  # groups drawn on one axis; beyond that a figure stops being readable
PANELS = (("loss", "Loss", 1.0), ("acc", "Accuracy (%)", 100.0))


def colour(index: int) -> str:
    return plt.get_cmap("tab10")(index % 10)


def _draw(
    ax: Axes, group: Group, key: str, scale: float, split: str, colour_: str, label: str, style: str, band: bool = True
) -> None:
    """The mean curve across the group's completed runs, with a ±1 std band when there are several."""
    curve = group.curves.get(f"{split}_{key}")
    if not curve:
        return
    epochs, mean, std = curve
    # A packed row: a wide pale line with open markers, so that a solo run of the same setting drawn over it (the
    # same numbers: a member trains as its solo run) leaves it visible as a halo.
    packed = (
        dict(linewidth=4, alpha=0.45, markersize=10, markerfacecolor="none", markeredgewidth=2) if group.packed else {}
    )
    ax.plot(
        epochs,
        [m * scale for m in mean],
        style,
        color=colour_,
        label=label,
        marker=marker(split, len(epochs)),
        **packed,
    )
    if band and len(group.completed) > 1:
        top = 100.0 if key == "acc" else float("inf")  # an accuracy band stops at 0 and 100 %
        ax.fill_between(
            epochs,
            [max((m - s) * scale, 0.0) for m, s in zip(mean, std)],
            [min((m + s) * scale, top) for m, s in zip(mean, std)],
            color=colour_,
            alpha=0.15,
            linewidth=0,
        )


def _epochs(groups: list[tuple[int, Group]]) -> list[int]:
    """Every epoch drawn for these groups."""
    return sorted({e for _, g in groups[:MAX_LINES] if g.curves for e in g.curves["val_acc"][0]})


def experiment_figure(name: str, groups: list[tuple[int, Group]], seed_points: list[dict[str, float]] | None) -> bytes:
    return png(draw_experiment(name, groups, seed_points))


def draw_experiment(
    name: str, groups: list[tuple[int, Group]], seed_points: list[dict[str, float]] | None
) -> plt.Figure:
    """Loss and accuracy, train (solid, circles) against val (dashed, squares): each variant one colour, or,
    for one setting alone, train blue and val orange; the seed's points as black markers."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, layout="constrained")
    last = max((g.curves["val_acc"][0][-1] for _, g in groups if g.curves), default=0)
    alone = len(groups) == 1
    for ax, (key, ylabel, scale) in zip(axes, PANELS):
        for index, group in groups[:MAX_LINES]:
            n = len(group.completed)
            for split, style, split_colour in (("train", "-", "tab:blue"), ("val", "--", "tab:orange")):
                line_colour = split_colour if alone else colour(index)
                _draw(ax, group, key, scale, split, line_colour, f"{group.label} {split} (n={n})", style)
        points = [p for p in seed_points or [] if p["epoch"] <= last]
        for split, seed_marker, face in (("train", "o", "none"), ("val", "s", "black")):
            if points:
                values = [p[f"{split}_{key}"] * scale for p in points]
                label = f"seed {split} (published, CIFAR-10)"
                ax.plot(
                    [p["epoch"] for p in points],
                    values,
                    seed_marker,
                    color="black",
                    markerfacecolor=face,
                    linestyle="none",
                    label=label,
                )
        epoch_axis(ax, ylabel, _epochs(groups) + [p["epoch"] for p in points])
        ax.legend(fontsize=7)
    synthetic = any(g.synthetic for _, g in groups)
    fig.suptitle(f"{name}: train (solid) vs val (dashed)" + (" — SYNTHETIC data" if synthetic else ""))
    return fig


def overlay_figure(groups: list[tuple[int, Group]]) -> bytes:
    """Val accuracy and val loss of every experiment group, one axis each, one shared legend."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=100, layout="constrained")
    for ax, (key, ylabel, scale) in zip(axes, PANELS[::-1]):
        for index, group in groups[:MAX_LINES]:
            label = f"{group.label} (n={len(group.completed)})"
            _draw(ax, group, key, scale, "val", colour(index), label, "-", band=False)
        epoch_axis(ax, f"Val {ylabel[0].lower()}{ylabel[1:]}", _epochs(groups))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="outside right center")
    synthetic = any(g.synthetic for _, g in groups)
    fig.suptitle("All experiments, validation" + (" — SYNTHETIC data" if synthetic else ""))
    return png(fig)
