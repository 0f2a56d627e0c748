"""Live plots: ensembles, cursor with threshold / feedback range / trial-state shading, rasters, performance.

Time axes are seconds before the newest rig stamp the console has seen (0 = now). Everything is
redrawn from the model's rings at the console's refresh rate; nothing here keeps its own history.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from gui.model import OTHER_PULSE, REWARD_KINDS, ConsoleModel
from gui.widgets.style import (
    CURSOR_RGB,
    DOWN_RGB,
    FAILED_RGB,
    HIT_RGB,
    LICK_RGB,
    MANUAL_RGB,
    MISS_RGB,
    PULSE_RGB,
    REWARD_RGB,
    THRESHOLD_RGB,
    TRIAL_STATE_RGBA,
    UP_RGB,
    trial_state_palette,
)

SHADE_BINS = 600
RASTER_ROWS = {"outcome": 2.0, "reward": 1.0, "lick": 0.0}


def state_shading(t_s: np.ndarray, states: np.ndarray, t0: float, t1: float, max_gap_s: float,
                  bins: int = SHADE_BINS) -> np.ndarray:
    """Trial state resampled onto ``bins`` equal time bins over [t0, t1] as lookup indices (0 = no data).

    Index ``k + 1`` is state code ``k`` (codes beyond the palette wrap). Bins further than ``max_gap_s``
    from any decision (before the first, or across a gap in the stream) are left empty.
    """
    out = np.zeros((1, bins), dtype=np.uint8)
    if len(t_s) == 0:
        return out
    centers = t0 + (np.arange(bins) + 0.5) * ((t1 - t0) / bins)
    idx = np.searchsorted(t_s, centers, side="right") - 1
    valid = idx >= 0
    idx_c = np.clip(idx, 0, len(t_s) - 1)
    valid &= (centers - t_s[idx_c]) <= max_gap_s
    codes = (states[idx_c].astype(np.int64) % (len(TRIAL_STATE_RGBA))) + 1
    out[0, valid] = codes[valid]
    return out


class LivePlots(QtWidgets.QWidget):
    def __init__(self, model: ConsoleModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(320, 440)  # four readable rows; the column scrolls below this
        g = self.graphics

        self.ensembles = g.addPlot(row=0, col=0, colspan=2, title="ensemble activity (dF/F)")
        self.ensembles.addLegend(offset=(5, 5))
        self.up_curve = self.ensembles.plot(pen=pg.mkPen(UP_RGB, width=1.5), name="up")
        self.down_curve = self.ensembles.plot(pen=pg.mkPen(DOWN_RGB, width=1.5), name="down")
        dotted = pg.mkPen((255, 255, 0), width=1, style=QtCore.Qt.PenStyle.DotLine)
        self.selected_curve = self.ensembles.plot(pen=dotted, name="clicked ROI (F−0.7·Fneu, scaled)")

        self.cursor = g.addPlot(row=1, col=0, colspan=2, title="cursor, threshold, feedback range, trial state")
        self.cursor.setXLink(self.ensembles)
        self.shade = pg.ImageItem(axisOrder="row-major")
        self.palette = trial_state_palette(model.state_names.names)
        lut = np.array(((0, 0, 0, 0), *self.palette), dtype=np.uint8)
        self.shade.setLookupTable(lut)
        self.shade.setLevels((0, len(lut) - 1))
        self.shade.setZValue(-10)
        self.cursor.addItem(self.shade, ignoreBounds=True)
        self.feedback_region = pg.LinearRegionItem(orientation="horizontal", movable=False,
                                                   brush=pg.mkBrush(255, 255, 255, 25),
                                                   pen=pg.mkPen(255, 255, 255, 60))
        self.feedback_region.setVisible(False)
        self.cursor.addItem(self.feedback_region, ignoreBounds=True)
        self.threshold_line = pg.InfiniteLine(angle=0, movable=False,
                                              pen=pg.mkPen(THRESHOLD_RGB, width=1.5, style=QtCore.Qt.PenStyle.DashLine),
                                              label="threshold", labelOpts={"position": 0.05, "color": THRESHOLD_RGB})
        self.threshold_line.setVisible(False)
        self.cursor.addItem(self.threshold_line)
        self.cursor_curve = self.cursor.plot(pen=pg.mkPen(CURSOR_RGB, width=1.5))

        self.raster = g.addPlot(row=2, col=0, colspan=2,
                                title="trial outcomes, rewards (test pulses grey), licks")
        self.raster.setXLink(self.ensembles)
        self.raster.setYRange(-0.5, 2.5, padding=0)
        self.raster.getAxis("left").setTicks([[(v, k) for k, v in RASTER_ROWS.items()]])
        self.raster.setMouseEnabled(y=False)
        self.outcome_dots = pg.ScatterPlotItem(symbol="o", size=8, pen=None)
        self.reward_ticks = pg.ScatterPlotItem(symbol="|", size=14, pen=None)
        self.lick_ticks = pg.ScatterPlotItem(symbol="|", size=10, pen=pg.mkPen(LICK_RGB), brush=pg.mkBrush(LICK_RGB))
        for item in (self.outcome_dots, self.reward_ticks, self.lick_ticks):
            self.raster.addItem(item)
        self.raster.setLabel("bottom", "seconds before now")

        self.hit_rate = g.addPlot(row=3, col=0, title="rolling hit rate")
        self.hit_rate.setYRange(0, 1, padding=0.05)
        self.hit_rate.setLabel("bottom", "trial")
        self.hit_rate_curve = self.hit_rate.plot(pen=pg.mkPen(HIT_RGB, width=2), symbol="o", symbolSize=4,
                                                 symbolBrush=HIT_RGB)
        self.target_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(200, 200, 200, 150,
                                                                                style=QtCore.Qt.PenStyle.DashLine))
        self.target_line.setVisible(False)
        self.hit_rate.addItem(self.target_line)

        self.calib = g.addPlot(row=3, col=1, title="calibration: threshold → hit rate")
        self.calib.setLabel("bottom", "threshold")
        self.calib.setYRange(0, 1, padding=0.05)
        self.calib_curve = self.calib.plot(pen=pg.mkPen((200, 200, 200), width=2))
        self.calib_point = pg.ScatterPlotItem(symbol="o", size=10, brush=pg.mkBrush(THRESHOLD_RGB), pen=None)
        self.calib.addItem(self.calib_point)
        self.calib_vline = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(THRESHOLD_RGB, width=1))
        self.calib_vline.setVisible(False)
        self.calib.addItem(self.calib_vline)
        # the predicted hit rate's 95 % interval, a vertical bar at the threshold
        self.calib_ci = pg.ErrorBarItem(x=np.zeros(1), y=np.zeros(1), top=np.zeros(1), bottom=np.zeros(1),
                                        beam=0.0, pen=pg.mkPen(THRESHOLD_RGB, width=2))
        self.calib_ci.setVisible(False)
        self.calib.addItem(self.calib_ci)
        for plot in (self.ensembles, self.cursor):
            # Draw at most about one point per pixel column (peak-preserving): the cost stays flat however
            # long the history or high the frame rate.
            plot.setDownsampling(auto=True, mode="peak")
            plot.setClipToView(True)
        g.ci.layout.setRowStretchFactor(0, 3)
        g.ci.layout.setRowStretchFactor(1, 3)
        g.ci.layout.setRowStretchFactor(2, 2)
        g.ci.layout.setRowStretchFactor(3, 3)

        self.performance = QtWidgets.QLabel("no trials yet")
        self.performance.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.performance.setWordWrap(True)  # a long line must wrap, not widen the column past the screen
        self.state_legend = QtWidgets.QLabel("")
        self.state_legend.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.state_legend.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.performance)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.state_legend)
        self._calibration_drawn = -1
        self._states_in_legend: tuple[int, ...] = ()
        self.target_hit_rate: float | None = None

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> None:
        m = self.model
        now = m.latest_rig_ns
        history = m.cfg.history_s
        self.ensembles.setXRange(-history, 0, padding=0)
        if len(m.decisions) and now:
            t = (m.decisions.ordered("t") - now) * 1e-9
            keep = t >= -history
            t = t[keep]
            up = m.decisions.ordered("up")[keep]
            down = m.decisions.ordered("down")[keep]
            cursor = m.decisions.ordered("cursor")[keep]
            states = m.decisions.ordered("trial_state")[keep]
            self.up_curve.setData(t, up)
            self.down_curve.setData(t, down)
            self.cursor_curve.setData(t, cursor)
            self._shade(t, states)
        if m.selected_roi is not None and len(m.fluor) and now:
            tf = (m.fluor.ordered("t") - now) * 1e-9
            sel = m.fluor.ordered("selected")
            ok = np.isfinite(sel) & (tf >= -history)
            if ok.any() and len(m.decisions):
                # Scale the raw trace into the ensembles' range so it is visible beside dF/F.
                lo, hi = np.nanpercentile(sel[ok], (2, 98))
                span = hi - lo if hi > lo else 1.0
                self.selected_curve.setData(tf[ok], (sel[ok] - lo) / span)
            else:
                self.selected_curve.setData([], [])
        else:
            self.selected_curve.setData([], [])
        self._rasters(now, history)
        self._performance()
        self._calibration()

    def _shade(self, t: np.ndarray, states: np.ndarray) -> None:
        history = self.model.cfg.history_s
        frame_gap = 5.0 / max(self.model.cfg.max_frame_rate_hz, 1.0) + 0.5
        self.shade.setImage(state_shading(t, states, -history, 0.0, frame_gap), autoLevels=False,
                            levels=(0, len(TRIAL_STATE_RGBA)))
        (_, _), (y0, y1) = self.cursor.viewRange()
        self.shade.setRect(QtCore.QRectF(-history, y0, history, y1 - y0))
        present = tuple(sorted(set(np.unique(states).tolist())))
        if present != self._states_in_legend:
            self._states_in_legend = present
            parts = []
            for code in present:
                r, g, b, a = self.palette[code % len(self.palette)]
                colour = f"rgb({r},{g},{b})" if a else "#888"
                parts.append(f'<span style="color:{colour}">■</span> {self.model.state_names.name(code)}')
            self.state_legend.setText("trial state shading: " + "  ".join(parts))

    def _rasters(self, now: int, history: float) -> None:
        m = self.model
        if not now:
            return
        out_t = (m.outcomes.ordered("t") - now) * 1e-9
        hits = m.outcomes.ordered("hit")
        keep = out_t >= -history
        brushes = [pg.mkBrush(HIT_RGB) if h else pg.mkBrush(MISS_RGB) for h in hits[keep]]
        self.outcome_dots.setData(out_t[keep], np.full(int(keep.sum()), RASTER_ROWS["outcome"]), brush=brushes)
        rw_t = (m.rewards.ordered("t") - now) * 1e-9
        delivered = m.rewards.ordered("delivered")
        kinds = m.rewards.ordered("kind")
        keep = rw_t >= -history
        colours = {REWARD_KINDS["decoder"]: REWARD_RGB, REWARD_KINDS["manual"]: MANUAL_RGB, OTHER_PULSE: PULSE_RGB}
        pens = [pg.mkPen(FAILED_RGB if not d else colours.get(int(k), PULSE_RGB), width=2)
                for d, k in zip(delivered[keep], kinds[keep], strict=True)]
        self.reward_ticks.setData(rw_t[keep], np.full(int(keep.sum()), RASTER_ROWS["reward"]), pen=pens)
        lick_t = (m.licks.ordered("t") - now) * 1e-9
        lick_t = lick_t[lick_t >= -history]
        self.lick_ticks.setData(lick_t, np.full(len(lick_t), RASTER_ROWS["lick"]))

    def _performance(self) -> None:
        m = self.model
        trials_done = len(m.outcomes)
        rate = m.rolling_hit_rate()
        per_min = m.rewards_per_min()
        pct = f"{m.hits / m.trials:.0%}" if m.trials else "–"
        joined = f" (+{m.rewards_before_join} before the console joined)" if m.rewards_before_join else ""
        failed = (f' · <span style="color:#e74c3c">{m.rewards_failed} failed/refused</span>'
                  if m.rewards_failed else "")
        pulses = (f" · test pulses/flushes {m.other_pulses} ({m.other_volume_ul:.1f} µL, not rewards)"
                  if m.other_pulses else "")
        self.performance.setText(
            f"<b>{m.mode_label}</b> · trials <b>{m.trials}</b> · hits <b>{m.hits}</b> ({pct}) · "
            f"rolling hit rate ({m.cfg.hit_rate_window_trials} trials): <b>"
            f"{'–' if rate is None else f'{rate:.0%}'}</b> · rewards <b>{m.rewards_delivered}</b>{failed} · "
            f"<b>{'–' if per_min is None else f'{per_min:.1f}'}</b>/min · reward volume "
            f"<b>{m.volume_ul:.1f} µL</b>{joined}{pulses}"
        )
        if trials_done:
            trials, rolling = m.hit_rate_series()
            self.hit_rate_curve.setData(trials.astype(np.float64), rolling)
        target = self.target_hit_rate
        if target is None and m.calibration:
            target = float(m.calibration.get("predicted_hit_rate", 0.0)) or None
        if target is not None:
            self.target_line.setPos(target)
            self.target_line.setVisible(True)

    def _calibration(self) -> None:
        m = self.model
        cal = m.calibration
        if cal is None or self._calibration_drawn == m.calibration_count:
            return
        self._calibration_drawn = m.calibration_count
        thresholds = np.asarray(cal.get("curve_thresholds") or [], dtype=np.float64)
        rates = np.asarray(cal.get("curve_hit_rates") or [], dtype=np.float64)
        if len(thresholds) == len(rates):
            order = np.argsort(thresholds)
            self.calib_curve.setData(thresholds[order], rates[order])
        threshold = float(cal["threshold"])
        self.calib_point.setData([threshold], [float(cal.get("predicted_hit_rate", np.nan))])
        self.calib_vline.setPos(threshold)
        self.calib_vline.setVisible(True)
        predicted = float(cal.get("predicted_hit_rate", np.nan))
        ci95 = cal.get("predicted_hit_rate_ci95") or []
        interval = ""
        if len(ci95) == 2 and np.isfinite(ci95).all() and np.isfinite(predicted):
            lo_ci, hi_ci = float(ci95[0]), float(ci95[1])
            self.calib_ci.setData(x=np.array([threshold]), y=np.array([predicted]),
                                  top=np.array([max(hi_ci - predicted, 0.0)]),
                                  bottom=np.array([max(predicted - lo_ci, 0.0)]))
            interval = f" (95 %: {lo_ci:.0%}–{hi_ci:.0%})"
        self.calib_ci.setVisible(bool(interval))
        self.calib.setTitle(f"calibration ({cal.get('method', '?')}): threshold {threshold:.3g} → "
                            f"{predicted:.0%} predicted{interval}")
        self.threshold_line.setPos(threshold)
        self.threshold_line.setVisible(True)
        lo, hi = float(cal.get("feedback_min", np.nan)), float(cal.get("feedback_max", np.nan))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            self.feedback_region.setRegion((lo, hi))
            self.feedback_region.setVisible(True)
