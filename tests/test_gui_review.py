"""Review mode (``rig console SESSION_FOLDER``): a finished session's field of view, ROIs, traces and events.

The session folder is written with the rig's own record layouts (tests/gui_fakes.write_finished_session);
ROIs are clicked with real mouse events on the field of view.
"""

from __future__ import annotations

import numpy as np
import pytest
from PyQt6 import QtCore, QtWidgets

from gui.review import ReviewError, load_review
from gui.review_window import EVENT_ROWS, ReviewWindow
from tests.gui_fakes import write_finished_session

LEFT = QtCore.Qt.MouseButton.LeftButton
WAIT_MS = 10_000


@pytest.fixture
def session_folder(tmp_path):
    return write_finished_session(tmp_path / "20250601-100000_m42_rig1", n_rois=9, n_frames=600)


@pytest.fixture
def review_window(qtbot, session_folder):
    window = ReviewWindow(load_review(session_folder))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield window
    window.close()


def curve(item) -> tuple[np.ndarray, np.ndarray]:
    x, y = item.getData()
    return np.asarray(x), np.asarray(y)


def test_the_session_files_are_read_back(session_folder):
    review = load_review(session_folder)
    assert review.n_rois == 9 and len(review.frames) == 600 and len(review.decisions) == 600
    assert review.notes == []
    tr = review.traces(4)
    assert np.median(tr.F) == pytest.approx(140.0, abs=1.0) and np.median(tr.dff) == pytest.approx(0.04, abs=0.01)
    assert tr.t_frames[0] == 0.0 and tr.t_frames[-1] == pytest.approx(599 / 30.0, abs=1e-3)
    (t_start, start), *_ = review.events_of("trial_start")
    assert start["frame"] == 120 and t_start == pytest.approx(119 / 30.0, abs=1e-3)  # frame 120 is row 119
    assert review.ensembles() == ([0, 1], [2])
    with pytest.raises(IndexError, match="ROIs 0..8"):
        review.traces(9)


def test_a_crashed_session_opens_with_notes_and_a_bad_folder_is_named(session_folder, tmp_path):
    with (session_folder / "decoder" / "decisions.rec").open("ab") as f:
        f.write(b"\x00" * 7)  # a torn final record
    with (session_folder / "decoder" / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"kind": "trial", "event": "hi')  # a torn final line
    (session_folder / "summary.json").unlink()
    review = load_review(session_folder)
    assert len(review.decisions) == 600 and review.summary == {}
    assert any("torn final record" in n for n in review.notes) and any("torn final line" in n for n in review.notes)
    assert "no summary.json" in review.summary_line()
    with pytest.raises(ReviewError, match="no such directory"):
        load_review(tmp_path / "missing")
    with pytest.raises(ReviewError, match="no acquisition/frames.rec or decoder/decisions.rec"):
        load_review(tmp_path)


def test_clicking_an_roi_plots_its_f_dff_and_the_trial_events(qtbot, review_window, session_folder):
    window = review_window
    fov, plots = window.fov, window.plots
    # The field of view: the session's mean image with the rig's ROIs (not the excluded ones), no live image.
    assert fov.rois.n == 9 and fov.mean_radio.isChecked() and not fov.live_radio.isVisibleTo(window)
    assert fov.image_item.image.shape == (128, 128) and fov.image_item.image[-1, -1] == pytest.approx(200.0)
    fov.reference_radio.setChecked(True)
    assert np.array_equal(fov.image_item.image, fov.rois.reference)
    # No controls: nothing here can talk to a rig.
    buttons = {b.text() for b in window.findChildren(QtWidgets.QPushButton) if b.isVisibleTo(window)}
    assert not buttons & {"1. Start baseline", "CLOSE VALVE", "Manual reward", "Apply ensembles", "Load ROIs…"}
    assert not fov.edit_row.isVisibleTo(window)
    # ROI 0 is shown first; clicking ROI 5 on the image plots ROI 5.
    assert plots.roi == 0
    cy, cx = fov.rois.centers[5]
    qtbot.mouseClick(fov.graphics.viewport(), LEFT, pos=fov.frame_to_widget(cy, cx))
    qtbot.waitUntil(lambda: plots.roi == 5, timeout=WAIT_MS)
    assert window.roi_spin.value() == 5 and "ROI 5" in plots.f_plot.titleLabel.text
    t, F = curve(plots.f_curve)
    assert len(t) == 600 and np.median(F) == pytest.approx(150.0, abs=1.0)  # ROI i's F is 100 + 10 i
    _, Fneu = curve(plots.fneu_curve)
    assert np.median(Fneu) == pytest.approx(20.0, abs=1.0)
    t_dff, dff = curve(plots.dff_curve)
    assert len(t_dff) == 600 and np.median(dff) == pytest.approx(0.05, abs=0.01)
    assert t_dff[-1] == pytest.approx(599 / 30.0, abs=1e-3)  # seconds from the first frame, as the F axis
    # The trial events on the same axis: 8 trial starts, 4 hits and 4 misses, 6 rewards/pulses.
    starts, _ = plots.trial_starts.getData()
    assert len(starts) == 8 and starts[0] == pytest.approx(119 / 30.0, abs=1e-3)
    outcomes, rows = plots.outcomes.getData()
    assert len(outcomes) == 8 and set(rows) == {EVENT_ROWS["hit / miss"]}
    assert len(plots.reward_ticks.getData()[0]) == 6
    labels = {line.label.format for line in plots.protocol_lines if getattr(line, "label", None) is not None}
    assert {"baseline_start", "calibrated", "bci_start", "stopped"} <= labels
    plots.f_plot.setXRange(5.0, 8.0, padding=0)  # zooming one plot zooms the three: one time axis
    for plot in (plots.dff_plot, plots.events_plot):
        assert plot.viewRange()[0] == pytest.approx([5.0, 8.0])
    # The selected outline is drawn in the selection colour; the ensembles in theirs.
    oy, ox = fov.rois.outline_y[5][0], fov.rois.outline_x[5][0]
    assert tuple(fov.overlay_item.image[oy, ox][:3]) == (255, 255, 0)
    assert "up: [0, 1]" in fov.ensemble_label.text()
    # The ROI number box selects too.
    window.roi_spin.setValue(7)
    qtbot.waitUntil(lambda: plots.roi == 7, timeout=WAIT_MS)
    assert np.median(curve(plots.f_curve)[1]) == pytest.approx(170.0, abs=1.0)


def test_a_session_without_rois_still_shows_traces_by_number(qtbot, session_folder):
    for name in ("stat.npy", "ops.npy"):
        (session_folder / "acquisition" / "rois" / name).unlink()
    window = ReviewWindow(load_review(session_folder))
    qtbot.addWidget(window)
    assert window.rois is None and "no stat.npy" in window.fov.roi_label.text()
    window.roi_spin.setValue(3)
    qtbot.waitUntil(lambda: window.plots.roi == 3, timeout=WAIT_MS)
    assert np.median(curve(window.plots.f_curve)[1]) == pytest.approx(130.0, abs=1.0)
    window.close()


class _RunsCode:
    """A pickle that would call a function when loaded (what a planted stat.npy does)."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_stat_npy_that_would_run_code_is_refused_and_the_traces_stay(qtbot, session_folder, capsys):
    stat = np.empty(1, dtype=object)
    stat[0] = _RunsCode()
    np.save(session_folder / "acquisition" / "rois" / "stat.npy", stat, allow_pickle=True)
    window = ReviewWindow(load_review(session_folder))  # loaded through rig.core.safe_npy
    qtbot.addWidget(window)
    assert window.rois is None and "refused to load" in window.fov.roi_label.text()
    assert "this must never run" not in capsys.readouterr().out
    window.roi_spin.setValue(2)
    qtbot.waitUntil(lambda: window.plots.roi == 2, timeout=WAIT_MS)
    window.close()
