"""The console window against a live bus: a fake supervisor (real ROUTER) and fake processes (real PUBs).

Every check waits on a condition (qtbot.waitUntil); buttons are clicked with real mouse events and
their commands are read back from the fake supervisor's socket.
"""

from __future__ import annotations

import numpy as np
import pytest
from PyQt6 import QtCore

from gui.config import GuiConfig
from gui.main_window import MainWindow
from gui.session import ConsoleSession
from rig.core.bus import free_tcp_port
from rig.core.clock import now_ns
from rig.core.codes import Mode
from rig.core.operator import Calibration, Counts, SnapshotWarning
from rig.core.schema import CalibrationResult, Control, Lick, ProcessError, RewardOutcome, RigWarning, TrialEvent
from tests.gui_fakes import MODE_BCI, MODE_PAUSED, FakeRig

LEFT = QtCore.Qt.MouseButton.LeftButton
WAIT_MS = 10_000


def open_console(qtbot, endpoint: str, **cfg) -> MainWindow:
    session = ConsoleSession(GuiConfig(refresh_hz=30, **cfg), endpoint)
    window = MainWindow(session)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


@pytest.fixture
def rig(tmp_path):
    with FakeRig(tmp_path / "session", n_rois=16, excluded_rois=4) as fake:
        fake.start_stream()
        yield fake


@pytest.fixture
def console(qtbot, rig):
    window = open_console(qtbot, rig.endpoints["command"])
    qtbot.waitUntil(lambda: len(window.model.decisions) > 5 and window.fov.rois is not None, timeout=WAIT_MS)
    yield window
    window.close()
    window.session.close()


def n_points(curve) -> int:
    x, _ = curve.getData()
    return 0 if x is None else len(x)


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, LEFT)


def test_window_shows_the_stream_rois_and_health(qtbot, rig, console):
    window = console
    m = window.model
    # Field of view: the decimated preview stretched over the full frame, outlines from the session folder.
    qtbot.waitUntil(lambda: window.fov.image_item.image is not None, timeout=WAIT_MS)
    assert window.fov.image_item.image.shape == (64, 64)
    assert window.fov.image_item.mapRectToParent(window.fov.image_item.boundingRect()).width() == 128
    assert window.fov.rois.n == 16 and window.fov.rois.reference.shape == (128, 128)
    assert "4 excluded ROIs not shown" in window.fov.roi_label.text()
    assert "up: [0, 1]" in window.fov.ensemble_label.text() and "down: [2]" in window.fov.ensemble_label.text()
    window.fov.reference_radio.setChecked(True)
    assert window.fov.image_item.image.shape == (128, 128)
    window.fov.mean_radio.setChecked(True)
    assert window.fov.image_item.image.shape == (64, 64) and window.fov.image_item.image.dtype == np.float32
    assert "shift dy +0.50 dx -0.25" in window.fov.shift_label.text()
    # Live plots.
    qtbot.waitUntil(lambda: n_points(window.plots.cursor_curve) > 5, timeout=WAIT_MS)
    t, _ = window.plots.up_curve.getData()
    assert t.max() <= 0 and t.min() >= -m.cfg.history_s
    # Health: latency per stage from the Decision stamps (the fake rig's stages are 2.0/0.1/0.2/0.1 ms).
    qtbot.waitUntil(lambda: window.health.latency_table.item(4, 0).text() == "2.40", timeout=WAIT_MS)
    assert window.health.latency_table.item(0, 1).text() == "2.00"
    qtbot.waitUntil(lambda: window.health.process_table.rowCount() == 4, timeout=WAIT_MS)
    rows = {window.health.process_table.item(r, 0).text(): window.health.process_table.item(r, 1).text()
            for r in range(4)}
    assert rows == {"acquisition": "running", "decoder": "running", "reward": "running", "supervisor": "running"}
    qtbot.waitUntil(lambda: "30.0 Hz" in window.health.rate_label.text(), timeout=WAIT_MS)
    assert "connected" in window.health.link_label.text()
    assert "corr <span" in window.health.registration_label.text()


def test_trial_events_rewards_licks_and_calibration_are_drawn(qtbot, rig, console):
    window = console
    t = now_ns()
    rig.emit("decoder", CalibrationResult(
        threshold=0.8, feedback_min=-0.4, feedback_max=0.8, predicted_hit_rate=0.5, method="resample",
        curve_thresholds=list(np.linspace(-1, 2, 20)), curve_hit_rates=list(np.linspace(1, 0, 20)),
        baseline_frames=900, t_ns=t))
    rig.emit("decoder", TrialEvent(kind="hit", trial=1, frame=10, t_ns=t, hits=1, trials=1))
    rig.emit("decoder", TrialEvent(kind="miss", trial=2, frame=40, t_ns=t + 1, hits=1, trials=2))
    rig.emit("reward", RewardOutcome(request_id="dec-1", status="delivered", reason="", volume_ul=3.0, open_ms=25.0,
                                     source="decoder", frame=10, t_ready=t - 4_000_000, t_written=t, t_done=t + 1))
    rig.emit("reward", Lick(onset=True, board_us=5, t_ns=t + 2))
    qtbot.waitUntil(lambda: window.model.calibration is not None and window.model.rewards_delivered == 1
                    and len(window.model.licks) == 1 and window.model.trials == 2, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.plots.threshold_line.isVisible(), timeout=WAIT_MS)
    assert window.plots.threshold_line.value() == pytest.approx(0.8)
    assert window.plots.feedback_region.getRegion() == pytest.approx((-0.4, 0.8))
    assert n_points(window.plots.calib_curve) == 20
    assert window.plots.reward_ticks.data.size == 1 and window.plots.lick_ticks.data.size == 1
    assert window.plots.outcome_dots.data.size == 2
    text = window.plots.performance.text()
    assert "trials <b>2</b>" in text and "hits <b>1</b> (50%)" in text and "volume <b>3.0 µL</b>" in text
    qtbot.waitUntil(lambda: window.health.latency_table.item(5, 0).text() == "4.00", timeout=WAIT_MS)


def test_warnings_errors_and_safe_state_are_shown_in_the_window(qtbot, rig, console):
    window = console
    rig.emit("reward", RigWarning(process="reward", code="serial_lost", message="reward board link lost"))
    rig.emit("decoder", ProcessError(process="decoder", error_type="ValueError", message="flat baseline"))
    rig.emit("supervisor", Control(command="safe_state", args={"reason": "decoder failed"}))

    def listed() -> str:
        lw = window.health.warning_list
        return "\n".join(lw.item(i).text() for i in range(lw.count()))

    qtbot.waitUntil(lambda: "reward board link lost" in listed() and "flat baseline" in listed(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT_MS)
    assert "SAFE STATE" in window.banner.text() and "decoder failed" in window.banner.text()


def test_protocol_controls_send_commands_to_the_supervisor(qtbot, tmp_path):
    with FakeRig(tmp_path / "s", mode=Mode.IDLE) as rig:
        rig.start_stream()
        window = open_console(qtbot, rig.endpoints["command"])
        try:
            run_protocol(qtbot, rig, window)
        finally:
            window.close()
            window.session.close()


def run_protocol(qtbot, rig, console) -> None:
    c = console.controls
    qtbot.waitUntil(lambda: console.model.mode_code == Mode.IDLE and c.start_baseline.isEnabled(), timeout=WAIT_MS)
    assert not c.start_bci.isEnabled() and not c.pause.isEnabled()  # not in idle
    c.mouse_id.setText("BCI-042")
    c.experimenter.setText("ada")
    c.notes.setPlainText("day 3, new ensembles")
    click(qtbot, c.start_baseline)
    qtbot.waitUntil(lambda: "start_baseline" in rig.command_names(), timeout=WAIT_MS)
    names = rig.command_names()
    assert names.index("set_metadata") < names.index("start_baseline")  # metadata is saved before the start
    assert rig.last_command("set_metadata").args == {"mouse_id": "BCI-042", "experimenter": "ada",
                                                        "notes": "day 3, new ensembles"}
    c.target_hit_rate.setValue(0.3)
    click(qtbot, c.calibrate)
    qtbot.waitUntil(lambda: c.start_bci.isEnabled(), timeout=WAIT_MS)  # the decoder is READY now
    click(qtbot, c.start_bci)
    qtbot.waitUntil(lambda: "start_bci" in rig.command_names(), timeout=WAIT_MS)
    assert rig.last_command("calibrate").args == {"target_hit_rate": 0.3}
    assert rig.last_command("start_bci").issued_by == "console"
    qtbot.waitUntil(lambda: c.status.text() == "start_bci: done", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: console.model.mode_code == Mode.BCI and c.pause.isEnabled(), timeout=WAIT_MS)
    assert not c.start_baseline.isEnabled() and not c.resume.isEnabled()


def test_pause_and_resume_change_the_decoder_mode_on_the_bus(qtbot, rig, console):
    c, m = console.controls, console.model
    assert m.mode_code == MODE_BCI
    click(qtbot, c.pause)
    qtbot.waitUntil(lambda: m.mode_code == MODE_PAUSED, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: c.resume.isEnabled() and not c.pause.isEnabled(), timeout=WAIT_MS)
    click(qtbot, c.resume)
    qtbot.waitUntil(lambda: m.mode_code == MODE_BCI, timeout=WAIT_MS)
    assert rig.command_names()[-2:] == ["pause", "resume"]
    qtbot.waitUntil(lambda: f"mode: {m.mode_names.name(MODE_BCI)}" in console.mode_label.text(), timeout=WAIT_MS)


def test_end_block_ends_the_block_not_the_session(qtbot, rig, console):
    c, m = console.controls, console.model
    qtbot.waitUntil(lambda: m.mode_code == MODE_BCI and c.end_block.isEnabled(), timeout=WAIT_MS)
    assert not c.start_baseline.isEnabled()
    click(qtbot, c.end_block)
    qtbot.waitUntil(lambda: m.mode_code == int(Mode.READY), timeout=WAIT_MS)
    assert rig.command_names()[-1] == "end_block"
    qtbot.waitUntil(lambda: c.start_baseline.isEnabled() and c.start_bci.isEnabled() and not c.end_block.isEnabled(),
                    timeout=WAIT_MS)
    assert c.stop.isEnabled() and not console.session.ended  # the session goes on: another block can start


def test_reward_and_valve_controls(qtbot, rig, console):
    c = console.controls
    qtbot.waitUntil(lambda: c.volume.value() == pytest.approx(3.0), timeout=WAIT_MS)  # from the rig's config
    c.volume.setValue(5.5)
    click(qtbot, c.manual_reward)
    click(qtbot, c.test_pulse)
    click(qtbot, c.close_valve)
    qtbot.waitUntil(lambda: "close_valve" in rig.command_names(), timeout=WAIT_MS)
    assert rig.command_names()[-3:] == ["manual_reward", "test_pulse", "close_valve"]
    assert rig.last_command("manual_reward").args == {"volume_ul": 5.5}


def test_stop_asks_first(qtbot, rig, console):
    c = console.controls
    asked = []
    c.confirm = lambda text: asked.append(text) or False
    click(qtbot, c.stop)
    click(qtbot, c.test_pulse)  # a later command arrives, so "stop" would have arrived before it
    qtbot.waitUntil(lambda: "test_pulse" in rig.command_names(), timeout=WAIT_MS)
    assert "stop" not in rig.command_names() and len(asked) == 1
    c.confirm = lambda text: True
    click(qtbot, c.stop)
    qtbot.waitUntil(lambda: "stop" in rig.command_names(), timeout=WAIT_MS)


def test_start_needs_a_mouse_id(qtbot, rig, console):
    c = console.controls
    rig.set_mode(Mode.IDLE)
    qtbot.waitUntil(lambda: c.start_baseline.isEnabled(), timeout=WAIT_MS)
    c.mouse_id.setText("")
    click(qtbot, c.start_baseline)
    assert "mouse id" in c.status.text()
    click(qtbot, c.test_pulse)
    qtbot.waitUntil(lambda: "test_pulse" in rig.command_names(), timeout=WAIT_MS)
    assert "start_baseline" not in rig.command_names() and "set_metadata" not in rig.command_names()


def test_clicking_rois_edits_ensembles_and_apply_sends_them(qtbot, rig, console):
    window = console
    fov = window.fov
    assert not fov.apply_button.isEnabled()
    fov.role_combo.setCurrentText("down")
    qtbot.waitUntil(lambda: "not in bci" in fov.apply_button.text(), timeout=WAIT_MS)  # refused during BCI
    rig.set_mode(Mode.READY)
    qtbot.waitUntil(lambda: fov.apply_button.text() == "Apply ensembles", timeout=WAIT_MS)
    cy, cx = rig.centres[5]
    qtbot.mouseClick(fov.graphics.viewport(), LEFT, pos=fov.frame_to_widget(cy, cx))
    qtbot.waitUntil(lambda: 5 in window.model.roles.down, timeout=WAIT_MS)
    assert window.model.roles.pending and fov.apply_button.isEnabled()
    assert window.model.selected_roi == 5
    fov.role_combo.setCurrentText("none")
    cy, cx = rig.centres[0]
    qtbot.mouseClick(fov.graphics.viewport(), LEFT, pos=fov.frame_to_widget(cy, cx))
    qtbot.waitUntil(lambda: 0 not in window.model.roles.up, timeout=WAIT_MS)
    click(qtbot, fov.apply_button)
    qtbot.waitUntil(lambda: "set_ensembles" in rig.command_names(), timeout=WAIT_MS)
    assert rig.last_command("set_ensembles").args == {"up": [1], "down": [2, 5]}
    qtbot.waitUntil(lambda: not window.model.roles.pending, timeout=WAIT_MS)
    assert window.model.roles.applied_down == [2, 5] and not fov.apply_button.isEnabled()
    # The clicked ROI's trace is plotted beside the ensembles.
    qtbot.waitUntil(lambda: n_points(window.plots.selected_curve) > 2, timeout=WAIT_MS)


def test_load_rois_from_another_folder_warns_on_a_count_mismatch(qtbot, rig, console, tmp_path):
    from tests.gui_fakes import write_suite2p_rois

    write_suite2p_rois(tmp_path / "other" / "plane0", 9)
    qtbot.waitUntil(lambda: console.model.n_rois_seen == 16, timeout=WAIT_MS)
    assert console.load_rois_from(tmp_path / "other" / "plane0")
    assert console.fov.rois.n == 9
    assert "the rig extracts 16 ROIs" in console.fov.roi_label.text()
    assert not console.load_rois_from(tmp_path / "nothing")
    assert "no stat.npy" in console.fov.roi_label.text()


def test_a_refused_command_is_shown(qtbot, tmp_path):
    with FakeRig(tmp_path / "s", refuse={"start_bci": "calibrate first"}) as rig:
        window = open_console(qtbot, rig.endpoints["command"])
        qtbot.waitUntil(lambda: window.model.snapshots > 0, timeout=WAIT_MS)
        click(qtbot, window.controls.start_bci)
        qtbot.waitUntil(lambda: "calibrate first" in window.controls.status.text(), timeout=WAIT_MS)
        assert any("calibrate first" in w.message for w in window.model.warnings)
        window.close()
        window.session.close()


def test_an_absent_rig_is_reported_not_waited_for(qtbot):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"  # nobody listens here
    window = open_console(qtbot, endpoint, command_timeout_s=0.1, command_retries=1)
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT_MS)
    assert "unreachable" in window.banner.text()
    click(qtbot, window.controls.test_pulse)
    qtbot.waitUntil(lambda: "FAILED" in window.controls.status.text(), timeout=WAIT_MS)
    window.close()
    window.session.close()


def test_a_late_console_catches_up_from_the_snapshot(qtbot, tmp_path):
    snap = {"counts": Counts(trials=10, hits=4, rewards_delivered=3, rewards_failed=0),
            "calibration": Calibration(threshold=1.1, feedback_min=0.0, feedback_max=1.1, predicted_hit_rate=0.4,
                                       method="resample", curve_thresholds=[0.0, 1.1, 2.0],
                                       curve_hit_rates=[1.0, 0.4, 0.0]),
            "warnings": [SnapshotWarning(process="gui", message="an earlier console was lost")],
            "metadata": {"mouse_id": "M9", "experimenter": "bo", "notes": "late"}}
    with FakeRig(tmp_path / "s", snapshot_extra=snap) as rig:
        rig.start_stream()
        qtbot.waitUntil(lambda: rig.frames_published > 20, timeout=WAIT_MS)  # the session is well under way
        window = open_console(qtbot, rig.endpoints["command"])
        qtbot.waitUntil(lambda: "trials <b>10</b>" in window.plots.performance.text(), timeout=WAIT_MS)
        text = window.plots.performance.text()
        assert "hits <b>4</b>" in text and "+3 before the console joined" in text
        assert window.plots.threshold_line.value() == pytest.approx(1.1)
        assert window.controls.mouse_id.text() == "M9"
        assert any("earlier console" in w.message for w in window.model.warnings)
        qtbot.waitUntil(lambda: len(window.model.decisions) > 5, timeout=WAIT_MS)
        assert window.session.reader.gaps == 0  # joining mid-stream is not a gap; later losses would be
        window.close()
        window.session.close()


def test_ensembles_set_by_another_console_are_shown(qtbot, rig, console):
    rig.emit("supervisor", Control(command="set_ensembles", args={"up": [3, 4], "down": [7]},
                                   issued_by="console@bench2"))
    qtbot.waitUntil(lambda: "up: [3, 4]" in console.fov.ensemble_label.text(), timeout=WAIT_MS)
    assert "down: [7]" in console.fov.ensemble_label.text()
    assert console.model.roles.applied_up == [3, 4] and not console.model.roles.pending


# ---------------------------------------------------------------------- fits a 1280x720 screen


def rect_in(widget, ancestor) -> QtCore.QRect:
    """``widget``'s rectangle in ``ancestor``'s coordinates."""
    return QtCore.QRect(widget.mapTo(ancestor, QtCore.QPoint(0, 0)), widget.size())


def assert_reachable(qtbot, window, area, widgets) -> None:
    """Each widget lies inside the scroll area's content, and scrolling to it shows it whole in the viewport.

    The scroll bars follow the content at the scroll area's next layout pass: a label the live rig just
    lengthened may have grown the content a moment before its bar appears, so each bar is waited for."""
    content, viewport = area.widget(), area.viewport()
    qtbot.waitUntil(lambda: content.height() <= viewport.height() or area.verticalScrollBar().isVisible(),
                    timeout=WAIT_MS)  # times out when the content stays taller with no bar
    qtbot.waitUntil(lambda: content.width() <= viewport.width() or area.horizontalScrollBar().isVisible(),
                    timeout=WAIT_MS)
    for widget in widgets:
        assert widget.isVisibleTo(window), widget
        assert widget.width() > 0 and widget.height() > 0, widget
        assert content.rect().contains(rect_in(widget, content)), (widget, rect_in(widget, content), content.rect())
        # Scroll to the whole widget (ensureWidgetVisible would settle for a spin box's text cursor).
        where = rect_in(widget, content)
        area.ensureVisible(where.center().x(), where.center().y(), widget.width() // 2 + 1, widget.height() // 2 + 1)
        shown = rect_in(widget, viewport)
        if widget.height() <= viewport.height() and widget.width() <= viewport.width():
            assert viewport.rect().contains(shown), (widget, shown, viewport.rect())
        else:  # larger than the viewport (a plot at the smallest size): at least its top-left corner comes into view
            assert viewport.rect().contains(shown.topLeft()), (widget, shown, viewport.rect())


@pytest.mark.parametrize("size", [(1280, 720), (960, 600)])
def test_the_window_fits_a_small_screen_and_every_panel_is_reachable(qtbot, rig, console, size):
    window, c, h, p, fov = console, console.controls, console.health, console.plots, console.fov
    assert window.minimumSize().width() <= 1280 and window.minimumSize().height() <= 720
    hint = window.minimumSizeHint()
    assert hint.width() <= size[0] and hint.height() <= size[1], hint  # nothing forces the window larger
    window.resize(*size)
    qtbot.waitUntil(lambda: window.size() == QtCore.QSize(*size), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: h.process_table.rowCount() == 4 and "30.0 Hz" in h.rate_label.text(), timeout=WAIT_MS)
    window.refresh()
    inside = window.rect()
    # Three columns side by side, all inside the window (the right one used to be cut off), none collapsed.
    columns = (window.left, window.plots_scroll, window.health_scroll)
    for column in columns:
        assert inside.contains(rect_in(column, window)), (column, rect_in(column, window), inside)
        assert column.width() >= 150 and column.height() >= 300, (column, column.size())
    xs = [rect_in(col, window).x() for col in columns]
    assert xs == sorted(xs)
    # The header (mode, CLOSE VALVE) and the field of view are never scrolled away.
    for widget in (window.mode_label, c.close_valve, fov.graphics, fov.live_radio, fov.load_button, fov.role_combo,
                   fov.apply_button, fov.revert_button, fov.roi_label):
        assert widget.isVisibleTo(window) and inside.contains(rect_in(widget, window)), widget
    assert fov.graphics.width() >= 150 and fov.graphics.height() >= 150
    # Each scrolling column: every key widget reachable.
    assert_reachable(qtbot, window, window.controls_scroll, [
        c.status, c.mouse_id, c.experimenter, c.notes, c.save_metadata, c.start_baseline, c.target_hit_rate,
        c.calibrate, c.start_bci, c.pause, c.resume, c.stop, c.volume, c.manual_reward, c.test_pulse])
    assert_reachable(qtbot, window, window.plots_scroll, [p.performance, p.graphics, p.state_legend])
    assert_reachable(qtbot, window, window.health_scroll, [
        h.rate_label, h.frames_label, h.registration_label, h.link_label, h.latency_table, h.process_table,
        h.console_label, h.tabs])
    # Inside the tables: the p99 column and every latency row are in view, no scrolling inside the table.
    table = h.latency_table
    assert table.columnViewportPosition(1) + table.columnWidth(1) <= table.viewport().width()
    last = table.rowCount() - 1
    assert table.rowViewportPosition(last) + table.rowHeight(last) <= table.viewport().height()
    if size == (1280, 720):  # at this size the controls also fit without scrolling (two columns)
        assert c.columns == 2 and not window.controls_scroll.verticalScrollBar().isVisible()


# ---------------------------------------------------------------------- the header's numbers and banners


def test_the_reward_link_comes_from_the_snapshot_when_the_console_joins_after_it(qtbot, rig, console):
    # The fake reward process published its link before this console existed (as the real one does: on change).
    qtbot.waitUntil(lambda: "connected" in console.health.link_label.text(), timeout=WAIT_MS)
    assert "unknown" not in console.health.link_label.text()
    rig.set_link("lost", "no reply to 3 pings")
    qtbot.waitUntil(lambda: "lost" in console.health.link_label.text(), timeout=WAIT_MS)
    assert "no reply to 3 pings" in console.health.link_label.text()
    snapshots = console.model.snapshots
    qtbot.waitUntil(lambda: console.model.snapshots > snapshots, timeout=WAIT_MS)
    assert "lost" in console.health.link_label.text()


def test_test_pulses_and_flushes_are_counted_apart_from_rewards(qtbot, rig, console):
    t = now_ns()
    for request_id, source, volume in (("dec-1", "decoder", 2.5), ("man-1", "manual", 2.5),
                                       ("test-1", "test_pulse", 2.6), ("flush-1", "flush", 5.2)):
        rig.emit("reward", RewardOutcome(request_id=request_id, status="delivered", reason="", volume_ul=volume,
                                         open_ms=20.0, source=source, t_done=t))
    qtbot.waitUntil(lambda: console.model.other_pulses == 2, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "test pulses/flushes 2" in console.plots.performance.text(), timeout=WAIT_MS)
    text = console.plots.performance.text()
    # 12.8 µL went through the valve; 5.0 µL of it were rewards, as summary.json counts them.
    assert "rewards <b>2</b>" in text and "reward volume <b>5.0 µL</b>" in text
    assert "test pulses/flushes 2 (7.8 µL, not rewards)" in text


def test_the_baseline_counts_down(qtbot, tmp_path):
    with FakeRig(tmp_path / "s", mode=Mode.BASELINE) as rig:
        rig.start_stream()
        window = open_console(qtbot, rig.endpoints["command"])
        try:
            bar = window.baseline_bar
            # Joined mid-baseline without its start event: an upper bound from task.baseline_s (10 s at 30 Hz).
            qtbot.waitUntil(lambda: bar.isVisible() and "at most" in bar.format(), timeout=WAIT_MS)
            assert bar.maximum() == 300
            start = rig.frames_published
            rig.emit("decoder", TrialEvent(kind="baseline_start", trial=0, frame=start, t_ns=now_ns(),
                                           detail={"frames": 600, "auto_protocol": True}))
            qtbot.waitUntil(lambda: "of 600 frames" in bar.format(), timeout=WAIT_MS)
            assert "at most" not in bar.format() and bar.maximum() == 600
            first = bar.value()
            qtbot.waitUntil(lambda: bar.value() > first + 10, timeout=WAIT_MS)
            frame = int(window.model.decisions.last("frame"))
            left_s = (600 - (frame - start + 1)) / 30.0
            seconds = float(bar.format().split(": ")[1].split(" s left")[0])
            assert seconds == pytest.approx(left_s, abs=1.0)  # the bar is redrawn each refresh
            rig.set_mode(Mode.IDLE)
            qtbot.waitUntil(lambda: not bar.isVisible(), timeout=WAIT_MS)
        finally:
            window.close()
            window.session.close()


def test_a_late_console_gets_the_baseline_start_from_the_snapshot(qtbot, tmp_path):
    from rig.core.operator import BaselineProgress

    with FakeRig(tmp_path / "s", mode=Mode.BASELINE,
                 snapshot_extra={"baseline": BaselineProgress(start_frame=1, frames=900)}) as rig:
        rig.start_stream()
        window = open_console(qtbot, rig.endpoints["command"])
        try:
            qtbot.waitUntil(lambda: "of 900 frames" in window.baseline_bar.format(), timeout=WAIT_MS)
            assert "at most" not in window.baseline_bar.format()
        finally:
            window.close()
            window.session.close()


def test_a_failed_calibration_is_a_banner_with_its_reason(qtbot, rig, console):
    rig.emit("decoder", TrialEvent(kind="calibration_failed", trial=0, frame=132, t_ns=now_ns(),
                                   detail={"error": "the baseline has only 40 usable frames"}))
    qtbot.waitUntil(lambda: console.calibration_banner.isVisible(), timeout=WAIT_MS)
    assert "CALIBRATION FAILED" in console.calibration_banner.text()
    assert "only 40 usable frames" in console.calibration_banner.text()
    assert not console.banner.isVisible()  # not mixed up with the rig's own state
    rig.emit("decoder", TrialEvent(kind="calibrated", trial=0, frame=400, t_ns=now_ns()))
    qtbot.waitUntil(lambda: not console.calibration_banner.isVisible(), timeout=WAIT_MS)


def test_calibrate_carries_the_operators_roi_override(qtbot, tmp_path):
    with FakeRig(tmp_path / "s", mode=Mode.IDLE) as rig:
        rig.start_stream()
        window = open_console(qtbot, rig.endpoints["command"])
        try:
            c = window.controls
            qtbot.waitUntil(lambda: c.calibrate.isEnabled(), timeout=WAIT_MS)
            c.allow_rois.setText("12 x")
            click(qtbot, c.calibrate)
            assert "not a list of ROI numbers" in c.status.text() and "calibrate" not in rig.command_names()
            c.allow_rois.setText("12, 40")
            c.target_hit_rate.setValue(0.4)
            click(qtbot, c.calibrate)
            qtbot.waitUntil(lambda: "calibrate" in rig.command_names(), timeout=WAIT_MS)
            assert rig.last_command("calibrate").args == {"target_hit_rate": 0.4, "allow_rois": [12, 40]}
        finally:
            window.close()
            window.session.close()


def test_an_uncertain_calibration_is_a_banner_and_its_interval_is_drawn(qtbot, rig, console):
    warning = "the predicted chance hit rate 50 % is uncertain: ... record a baseline of about 25 min (1500 s)"
    rig.emit("decoder", CalibrationResult(
        threshold=0.8, feedback_min=-0.4, feedback_max=0.8, predicted_hit_rate=0.5, method="hit_rate",
        curve_thresholds=list(np.linspace(-1, 2, 20)), curve_hit_rates=list(np.linspace(1, 0, 20)),
        baseline_frames=900, t_ns=now_ns(), predicted_hit_rate_ci95=[0.25, 0.8], warnings=[warning]))
    qtbot.waitUntil(lambda: console.calibration_banner.isVisible(), timeout=WAIT_MS)
    assert console.calibration_banner.text() == f"CALIBRATION UNCERTAIN: {warning}"
    qtbot.waitUntil(lambda: console.plots.calib_ci.isVisible(), timeout=WAIT_MS)
    assert "(95 %: 25%–80%)" in console.plots.calib.titleLabel.text
    opts = console.plots.calib_ci.opts
    assert (opts["y"][0] - opts["bottom"][0], opts["y"][0] + opts["top"][0]) == pytest.approx((0.25, 0.8))


# ---------------------------------------------------------------------- the end of the session


def test_after_the_session_ends_the_window_stays_for_review_with_controls_off(qtbot, tmp_path):
    rig = FakeRig(tmp_path / "s")
    window = None
    try:
        rig.start_stream()
        window = open_console(qtbot, rig.endpoints["command"], command_timeout_s=0.2, command_retries=1,
                              snapshot_interval_s=0.2)
        c, fov, session = window.controls, window.fov, window.session
        qtbot.waitUntil(lambda: len(window.model.decisions) > 5 and fov.rois is not None, timeout=WAIT_MS)
        assert c.stop.isEnabled() and c.close_valve.isEnabled()
        rig.end_session()
        qtbot.waitUntil(lambda: bool(session.ended), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: "SESSION ENDED" in window.banner.text(), timeout=WAIT_MS)
        assert "stopping" in session.ended
        controls = (c.start_baseline, c.calibrate, c.start_bci, c.pause, c.resume, c.stop, c.manual_reward,
                    c.test_pulse, c.close_valve, c.save_metadata, c.mouse_id, c.volume)
        assert not any(w.isEnabled() for w in controls)
        assert not fov.edit_row.isVisible() and "session ended" in window.windowTitle()
        # Then the rig shuts its sockets: expected, so not "unreachable", and no more requests.
        rig.close()
        qtbot.waitUntil(lambda: session.rig_gone, timeout=WAIT_MS)
        window.refresh()
        assert "SESSION ENDED" in window.banner.text() and "unreachable" not in window.banner.text()
        assert not session.unreachable
        assert not any(w.code == "rig_unreachable" for w in window.model.warnings)
        assert "shut down after the session" in window.connection_label.text()
        assert window.send_command("test_pulse", {}) == -1 and "not sent" in c.status.text()
        # What was received stays for review: clicking an ROI selects it (no role change).
        up_before = list(window.model.roles.up)
        cy, cx = rig.centres[5]
        qtbot.mouseClick(fov.graphics.viewport(), LEFT, pos=fov.frame_to_widget(cy, cx))
        qtbot.waitUntil(lambda: window.model.selected_roi == 5, timeout=WAIT_MS)
        assert window.model.roles.up == up_before and not window.model.roles.pending
        assert len(window.model.decisions) > 5
        assert not session.commands.in_flight()  # nothing is being asked of a rig that is gone
    finally:
        if window is not None:
            window.close()
            window.session.close()
        rig.close()


def test_a_rig_gone_without_a_word_is_finished_if_its_session_json_says_so(qtbot, tmp_path):
    rig = FakeRig(tmp_path / "s")
    window = None
    try:
        window = open_console(qtbot, rig.endpoints["command"], command_timeout_s=0.2, command_retries=1,
                              snapshot_interval_s=0.2)
        qtbot.waitUntil(lambda: window.model.snapshots > 0, timeout=WAIT_MS)
        (tmp_path / "s" / "session.json").write_text('{"status": "ok"}', encoding="utf-8")
        rig.close()  # the console missed the supervisor's last heartbeats (it was busy, or joined too late)
        qtbot.waitUntil(lambda: window.session.rig_gone, timeout=WAIT_MS)
        assert "session.json status 'ok'" in window.session.ended
        qtbot.waitUntil(lambda: "SESSION ENDED" in window.banner.text(), timeout=WAIT_MS)
        assert not window.controls.stop.isEnabled()
    finally:
        if window is not None:
            window.close()
            window.session.close()
        rig.close()
