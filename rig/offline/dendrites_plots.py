"""The figures of ``rig dendrites`` (PNG, matplotlib Agg), also drawn into ``rig report``'s dendrite section.

* ``dendrites_aligned.png``: per role, the soma-free dendritic signal (z-scored, mean over the role's
  dendrites) around hits, misses and rewards, with bootstrap 95 % bands over events;
* ``dendrites_index.png``: every dendrite's instructive index with its 95 % CI, grouped by role, the role
  indices with theirs, and the circular-shift null of each role.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ROLE_COLORS = {"up": "#1565c0", "down": "#ef6c00", "other": "0.45"}
EVENT_TITLES = {"hit": "around hits", "miss": "around misses", "reward": "around rewards"}


def draw_aligned(out: dict[str, Any], fig: Figure) -> str:
    """Three panels (hit, miss, reward): each role's mean soma-free signal with its 95 % band."""
    axes = fig.subplots(1, 3, sharey=True)
    shown = 0
    for ax, name in zip(axes, ("hit", "miss", "reward"), strict=True):
        for role, per_event in out["events"].items():
            ev = per_event.get(name)
            if ev is None:
                continue
            color = ROLE_COLORS[role]
            ax.plot(ev["t"], ev["mean"], color=color, lw=1.8, label=f"{role} (n={ev['n']})")
            ax.fill_between(ev["t"], ev["lo"], ev["hi"], color=color, alpha=0.2, lw=0)
            shown += 1
        ax.axvline(0, color="0.3", lw=1, ls="--")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(EVENT_TITLES[name], fontsize=9)
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    axes[0].set_ylabel("dendrite − soma (z, mean ± 95 %)")
    if not shown:
        return "No hits, misses or rewards far enough from the session's edges."
    return "Soma-free dendritic signal per ensemble role, averaged over events (95 % bootstrap bands over events)."


def draw_index(out: dict[str, Any], fig: Figure) -> str:
    """Per-dendrite indices with CIs by role, the role indices, and the null each p-value came from."""
    ax, ax_null = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [2.2, 1]})
    res = out["result"]
    roles = out["roles"]
    x0 = 0
    ticks, labels = [], []
    for role in ("up", "down", "other"):
        cols = [j for j, r in enumerate(roles) if r == role]
        if not cols:
            continue
        xs = x0 + np.arange(len(cols))
        color = ROLE_COLORS[role]
        ci, mid_vals = res.per_dendrite_ci[cols], res.per_dendrite[cols]
        ax.errorbar(xs, mid_vals, yerr=[mid_vals - ci[:, 0], ci[:, 1] - mid_vals], fmt="o", ms=3, color=color,
                    elinewidth=0.8, alpha=0.8)
        info = res.role[role]
        mid = xs.mean()
        ax.hlines(info["index"], xs[0] - 0.4, xs[-1] + 0.4, color=color, lw=2.5)
        ax.fill_between([xs[0] - 0.4, xs[-1] + 0.4], *info["ci95"], color=color, alpha=0.15, lw=0)
        ticks.append(mid)
        labels.append(role)
        x0 += len(cols) + 2
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylabel("instructive index (corr. with error)")
    for role, null in res.null.items():
        ax_null.hist(null, bins=40, color=ROLE_COLORS[role], alpha=0.35, density=True, orientation="horizontal")
        ax_null.axhline(res.role[role]["index"], color=ROLE_COLORS[role], lw=2)
    ax_null.set_xlabel("circular-shift null (density)")
    up, down = res.role["up"], res.role["down"]
    p_opp = out["p_opposite"]
    if up["index"] is None or down["index"] is None:
        return "Indices per dendrite and role (no up or no down dendrite: no p_opposite)."
    return (f"up {up['index']:+.3f} [{up['ci95'][0]:+.3f}, {up['ci95'][1]:+.3f}], down {down['index']:+.3f} "
            f"[{down['ci95'][0]:+.3f}, {down['ci95'][1]:+.3f}]; p_opposite {p_opp:.3g} "
            f"({out['soma']} soma regression).")


def save_plots(out: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write both figures as PNG into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw, size in (("dendrites_aligned", draw_aligned, (10.5, 3.4)),
                             ("dendrites_index", draw_index, (9.0, 3.8))):
        fig = plt.figure(figsize=size, dpi=100, layout="constrained")
        try:
            caption = draw(out, fig)
            fig.suptitle(caption, fontsize=9, x=0.01, ha="left")
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100)
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def report_sections(session: Any) -> list[tuple[str, str, Callable[[Any, Figure], str]]]:
    """``rig report``'s dendrite figures as (key, title, draw): none without a dendrite plane; the reason why
    not when the session has one but cannot be analysed (no links, no trials...)."""
    from rig.offline.dendrites import analyse  # noqa: PLC0415
    from rig.offline.dendrites_data import DendriteError, has_dendrite_plane, load_dendrite_data  # noqa: PLC0415

    if not has_dendrite_plane(session):
        return []
    try:
        out = analyse(load_dendrite_data(session), n_boot=1000, progress=False)
    except DendriteError as exc:
        message = str(exc)

        def draw_error(_session: Any, fig: Figure) -> str:
            ax = fig.subplots()
            ax.text(0.5, 0.5, "not analysed", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
            return f"rig dendrites: {message}"

        return [("dendrites", "Dendrites: instructive index", draw_error)]
    return [("dendrites_index", "Dendrites: instructive index per role (rig dendrites)",
             lambda _s, fig: draw_index(out, fig)),
            ("dendrites_aligned", "Dendrites: soma-free signal around hits, misses, rewards",
             lambda _s, fig: draw_aligned(out, fig))]
