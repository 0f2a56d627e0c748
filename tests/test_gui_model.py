"""The console's pure-Python parts: rings, model statistics, late join, ROI outlines, endpoints, config."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from gui.bus_reader import resolve_endpoint
from gui.config import GuiConfig
from gui.labels import CodeNames
from gui.model import ConsoleModel
from gui.rings import ColumnRing
from gui.rois import RoiLoadError, load_roi_outlines, outline_pixels
from gui.roles import RoleEdit
from gui.widgets.plots import state_shading
from rig.app.config import ConfigError, config_from_dict
from rig.core.operator import Calibration, Counts, Ensembles, ProcessStatus, Snapshot, SnapshotWarning
from rig.core.schema import (
    CalibrationResult,
    Control,
    Decision,
    FluorFrame,
    Heartbeat,
    RewardOutcome,
    RigWarning,
    StateChange,
    TrialEvent,
)
from tests.gui_fakes import write_suite2p_rois


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def decision(frame: int, t0: int, reg_ms: float = 2.0, mode: int = 2, state: int = 1) -> Decision:
    t_reg = t0 + int(reg_ms * 1e6)
    return Decision(frame=frame, t_ready=t0, t_registered=t_reg, t_extracted=t_reg + 100_000,
                    t_received=t_reg + 300_000, t_decided=t_reg + 400_000, mode=mode, trial=frame // 10,
                    trial_state=state, up=0.1 * frame, down=-0.1, cursor=0.1 * frame + 0.1, cursor_norm=0.5,
                    tone_hz=4000.0, angle_bin=2, reward_requested=False)


@pytest.mark.parametrize("capacity", [1, 3, 7])
def test_ring_keeps_the_newest_rows_in_time_order(capacity):
    ring = ColumnRing(capacity, {"x": np.int64})
    buffer_before = ring.columns["x"]
    for total in range(0, 3 * capacity + 2):
        expected = list(range(total))[-capacity:] if total else []
        assert list(ring.ordered("x")) == expected
        assert list(ring.ordered("x", newest=2)) == expected[-2:]
        ring.columns["x"][ring.advance()] = total
    assert ring.columns["x"] is buffer_before  # never reallocated
    assert len(ring) == capacity


def test_latency_percentiles_come_from_the_decision_stamps():
    model = ConsoleModel(GuiConfig(latency_window_frames=100))
    t = 10**12
    for i in range(100):
        model.ingest(decision(i, t + i * 33_000_000, reg_ms=1.0 + i * 0.01))  # register 1.00 .. 1.99 ms
    stats = model.latency_stats()
    assert stats["register"][0] == pytest.approx(np.percentile(1.0 + np.arange(100) * 0.01, 50), abs=1e-3)
    assert stats["register"][1] == pytest.approx(np.percentile(1.0 + np.arange(100) * 0.01, 99), abs=1e-3)
    assert stats["extract"] == pytest.approx((0.1, 0.1), abs=1e-4)
    assert stats["transport"] == pytest.approx((0.2, 0.2), abs=1e-4)
    assert stats["decide"] == pytest.approx((0.1, 0.1), abs=1e-4)
    assert stats["total"][1] == pytest.approx(stats["register"][1] + 0.4, abs=1e-3)
    # A window of 100 frames: older decisions drop out of the statistics.
    for i in range(100):
        model.ingest(decision(100 + i, t + (100 + i) * 33_000_000, reg_ms=5.0))
    assert model.latency_stats()["register"] == pytest.approx((5.0, 5.0), abs=1e-4)


def test_decisions_without_upstream_stamps_are_not_counted_as_latency():
    model = ConsoleModel(GuiConfig())
    msg = decision(1, 10**12)
    msg.t_registered = 0
    model.ingest(msg)
    assert len(model.decisions) == 1
    assert model.latency_stats() == {}


def test_trial_counts_hit_rate_and_rewards():
    cfg = GuiConfig(hit_rate_window_trials=4, reward_rate_window_s=60.0)
    model = ConsoleModel(cfg)
    t = 10**12
    outcomes = ["hit", "miss", "hit", "hit", "miss", "miss"]
    hits = 0
    for k, kind in enumerate(outcomes, start=1):
        hits += kind == "hit"
        model.ingest(TrialEvent(kind="trial_start", trial=k, frame=k * 100, t_ns=t, hits=hits - (kind == "hit"),
                                trials=k))
        model.ingest(TrialEvent(kind=kind, trial=k, frame=k * 100 + 50, t_ns=t + k * 10**9, hits=hits, trials=k))
    assert (model.trials, model.hits) == (6, 3)
    assert model.rolling_hit_rate() == pytest.approx(0.5)  # last 4: hit, hit, miss, miss
    trials, rolling = model.hit_rate_series()
    assert list(trials) == [1, 2, 3, 4, 5, 6]
    assert rolling == pytest.approx([1.0, 0.5, 2 / 3, 0.75, 0.5, 0.5])
    for k in range(6):  # one delivered reward every 5 s over 30 s, plus one failure
        model.ingest(RewardOutcome(request_id=f"r{k}", status="delivered", reason="", volume_ul=2.5, open_ms=20.0,
                                   source="decoder", t_ready=t + k * 5 * 10**9 - 3_000_000,
                                   t_written=t + k * 5 * 10**9, t_done=t + k * 5 * 10**9 + 20_000_000))
    model.ingest(RewardOutcome(request_id="bad", status="refused", reason="safe state", volume_ul=2.5, open_ms=0.0,
                               source="manual", t_requested=t + 26 * 10**9))
    assert model.rewards_delivered == 6 and model.rewards_failed == 1
    assert model.volume_ul == pytest.approx(15.0)
    assert model.reward_latency_stats() == pytest.approx((3.0, 3.0), abs=1e-3)
    assert model.rewards_per_min() == pytest.approx(6 / (model.latest_rig_ns - model.first_rig_ns) * 60e9, rel=1e-6)
    assert any("refused" in line for line in model.events)


def test_snapshot_catches_up_a_late_console_without_double_counting():
    clock = FakeClock()
    model = ConsoleModel(GuiConfig(), clock=clock)
    snap = Snapshot(
        session_dir="/data/s1", endpoints={"decoder": "tcp://127.0.0.1:5001"}, mode="running",
        processes={"decoder": ProcessStatus(state="running", stats={"frames": 10.0}, critical=True),
                   "gui": ProcessStatus(state="failed_reported", stats={}, critical=False)},
        counts=Counts(trials=12, hits=5, rewards_delivered=5, rewards_failed=1),
        calibration=Calibration(threshold=0.7, feedback_min=-0.2, feedback_max=0.7, predicted_hit_rate=0.5,
                                method="resample", curve_thresholds=[0.0, 1.0], curve_hit_rates=[1.0, 0.0]),
        warnings=[SnapshotWarning(process="reward", code="serial_lost", message="link lost"),
                  SnapshotWarning(process="gui", message="no heartbeat")],
        metadata={"mouse_id": "M7", "experimenter": "ada", "notes": ""},
        config={"decoder": {"up": [3, 1], "down": [4]}},
    )
    model.apply_snapshot(snap)
    assert (model.trials, model.hits, model.rewards_delivered) == (12, 5, 5)
    assert model.rewards_before_join == 5
    assert model.calibration["threshold"] == 0.7
    assert model.processes["gui"].state == "lost" and not model.processes["gui"].critical
    assert [w.message for w in model.warnings] == ["link lost", "no heartbeat"]
    assert model.roles.applied_up == [1, 3] and model.roles.up == [1, 3] and model.roles.down == [4]
    assert model.metadata["mouse_id"] == "M7"
    # Bus traffic after the snapshot moves the counters on; a stale snapshot never moves them back.
    model.ingest(TrialEvent(kind="hit", trial=13, frame=900, t_ns=5, hits=6, trials=13))
    model.ingest(RigWarning(process="reward", code="serial_lost", message="link lost again"))
    snap.warnings.append(SnapshotWarning(process="reward", code="serial_lost", message="link lost again"))
    model.apply_snapshot(snap)
    assert (model.trials, model.hits) == (13, 6)
    assert [w.message for w in model.warnings] == ["link lost", "no heartbeat", "link lost again"]


def test_a_failed_calibration_is_a_warning():
    model = ConsoleModel(GuiConfig())
    model.ingest(TrialEvent(kind="calibration_failed", trial=0, frame=132, sender="decoder",
                            detail={"error": "the baseline is too short"}))
    assert model.warnings[-1].code == "calibration_failed" and "too short" in model.warnings[-1].message
    assert "too short" in model.events[-1]


def test_heartbeat_age_uses_the_console_clock():
    clock = FakeClock()
    model = ConsoleModel(GuiConfig(), clock=clock)
    model.ingest(Heartbeat(process="decoder", state="running", t_ns=123, pid=77, stats={"frames": 5.0}))
    clock.t += 3.5
    assert model.heartbeat_age("decoder") == pytest.approx(3.5)
    assert model.heartbeat_age("reward") is None
    model.ingest(StateChange(process="decoder", state="failed", reason="ValueError: boom"))
    assert model.processes["decoder"].state == "failed"
    assert model.warnings[-1].level == "error" and "boom" in model.warnings[-1].message


def test_selected_roi_trace_and_registration_quality():
    model = ConsoleModel(GuiConfig())
    F = np.arange(10, dtype=np.float32) * 10
    Fneu = np.ones(10, dtype=np.float32) * 10
    model.select_roi(4)
    for i in range(5):
        model.ingest(FluorFrame(frame=i, t_ready=1, t_registered=2, t_extracted=3, dy=1.5, dx=-0.5,
                                corr=0.8 + 0.01 * i, flags=1 if i == 0 else 0, F=F, Fneu=Fneu, t_sent=10**9 + i))
    assert model.fluor.ordered("selected") == pytest.approx([33.0] * 5)
    reg = model.registration_quality()
    assert reg["corr"] == pytest.approx(0.84) and reg["corr_min"] == pytest.approx(0.8)
    assert reg["bad_fraction"] == pytest.approx(0.2)
    assert model.n_rois_seen == 10
    assert np.isnan(reg["corr_z"])  # too few frames for a robust spread


def test_registration_quality_z_score_against_recent_frames():
    """corr is judged against the session's own frames: 0.30 is fine among 0.3s, an outlier among 0.5s."""
    model = ConsoleModel(GuiConfig())
    F = np.ones(3, dtype=np.float32)
    for i in range(40):
        model.ingest(FluorFrame(frame=i, t_ready=1, t_registered=2, t_extracted=3, dy=0.0, dx=0.0,
                                corr=0.5 + 0.01 * (i % 3), flags=0, F=F, Fneu=F, t_sent=10**9 + i))
    assert abs(model.registration_quality()["corr_z"]) < 2
    model.ingest(FluorFrame(frame=40, t_ready=1, t_registered=2, t_extracted=3, dy=0.0, dx=0.0, corr=0.3,
                            flags=0, F=F, Fneu=F, t_sent=10**9 + 40))
    assert model.registration_quality()["corr_z"] < -5


def test_calibration_message_and_mode_names():
    names = CodeNames("mode", {0: "idle", 2: "bci"})
    model = ConsoleModel(GuiConfig(), mode_names=names)
    assert model.mode_label == "no decisions yet"
    model.ingest(decision(1, 10**12, mode=2))
    assert model.mode_label == "bci"
    model.ingest(decision(2, 10**12, mode=9))
    assert model.mode_label == "mode 9"  # an unknown code is shown as its number, never mislabelled
    model.ingest(CalibrationResult(threshold=1.2, feedback_min=0.0, feedback_max=1.2, predicted_hit_rate=0.4,
                                   method="resample", curve_thresholds=[0.5, 1.2], curve_hit_rates=[0.9, 0.4]))
    assert model.calibration["curve_hit_rates"] == [0.9, 0.4] and model.calibration_count == 1


def test_role_edits_are_pending_until_applied():
    roles = RoleEdit()
    roles.set_applied([1, 2], [5])
    roles.assign(2, "down")
    roles.assign(7, "up")
    roles.assign(5, "none")
    assert (sorted(roles.up), sorted(roles.down)) == ([1, 7], [2])
    assert roles.pending and roles.role(2) == "down" and roles.role(5) == "other"
    with pytest.raises(ValueError, match="unknown ROI role"):
        roles.assign(1, "sideways")
    roles.set_applied(roles.up, roles.down)
    assert not roles.pending


def test_ensembles_relayed_by_the_supervisor_update_the_applied_roles():
    model = ConsoleModel(GuiConfig())
    model.roles.set_applied([0, 1], [2])
    model.roles.assign(7, "up")  # an edit in progress here
    model.ingest(Control(command="set_ensembles", args={"up": [4], "down": [5, 6]}, issued_by="console@bench2"))
    assert model.roles.applied_up == [4] and model.roles.applied_down == [5, 6]
    assert 7 in model.roles.up and model.roles.pending  # the local edit is kept, still pending
    assert "console@bench2" in model.events[-1]
    model.apply_snapshot(Snapshot(session_dir="", endpoints={}, mode="running", ensembles=Ensembles(up=[9])))
    assert model.roles.applied_up == [9]


def test_outline_is_the_mask_border():
    yy, xx = np.mgrid[0:5, 0:5]
    oy, ox = outline_pixels(yy.ravel() + 10, xx.ravel() + 20)
    assert len(oy) == 16  # the 5x5 square's border
    assert set(zip(oy.tolist(), ox.tolist(), strict=True)).isdisjoint({(12, 22), (11, 21), (13, 23)})


def test_load_roi_outlines_from_a_suite2p_folder(tmp_path):
    centres = write_suite2p_rois(tmp_path / "plane0", 9, shape=(60, 60))
    rois = load_roi_outlines(tmp_path / "plane0")
    assert rois.n == 9 and rois.shape == (60, 60) and rois.reference.shape == (60, 60)
    for i, (cy, cx) in enumerate(centres):
        assert rois.roi_at(cy, cx) == i
    assert rois.roi_at(0, 0) is None and rois.roi_at(-5, 500) is None
    iscell = np.array([[1, 0.9], [0, 0.1]] * 4 + [[1, 0.8]], dtype=np.float64)
    write_suite2p_rois(tmp_path / "cells", 9, shape=(60, 60), iscell=iscell)
    cells = load_roi_outlines(tmp_path / "cells", only_cells=True)
    assert cells.n == 5 and "cells" in cells.notes[0]
    first = load_roi_outlines(tmp_path / "cells", first_n=6)  # the rig's folder: extracted ROIs come first
    assert first.n == 6 and "3 excluded ROIs not shown" in first.notes[0]
    assert first.roi_at(*centres[8]) is None
    with pytest.raises(RoiLoadError, match="9 ROIs, but the rig extracts 12"):
        load_roi_outlines(tmp_path / "cells", first_n=12)


def test_roi_loading_errors_name_the_folder(tmp_path):
    with pytest.raises(RoiLoadError, match="no stat.npy"):
        load_roi_outlines(tmp_path)
    write_suite2p_rois(tmp_path / "p", 4, shape=(40, 40))
    with pytest.raises(RoiLoadError, match="no iscell.npy"):
        load_roi_outlines(tmp_path / "p", only_cells=True)
    with pytest.raises(RoiLoadError, match="outside the 10x10 frame"):
        load_roi_outlines(tmp_path / "p", frame_shape=(10, 10))


def test_endpoints_of_a_remote_rig_use_the_command_host():
    assert resolve_endpoint("tcp://127.0.0.1:5001", "tcp://rig-pc:5000") == "tcp://rig-pc:5001"
    assert resolve_endpoint("tcp://0.0.0.0:5001", "tcp://10.0.0.5:5000") == "tcp://10.0.0.5:5001"
    assert resolve_endpoint("tcp://0.0.0.0:5001", "tcp://127.0.0.1:5000") == "tcp://127.0.0.1:5001"
    assert resolve_endpoint("tcp://10.0.0.9:5001", "tcp://rig-pc:5000") == "tcp://10.0.0.9:5001"
    with pytest.raises(ValueError, match="not tcp://HOST:PORT"):
        resolve_endpoint("ipc:///tmp/x", "tcp://rig:1")


def test_state_shading_marks_gaps_and_states():
    t = np.array([-10.0, -9.0, -8.0, -2.0, -1.0])
    states = np.array([0, 1, 1, 2, 2])
    img = state_shading(t, states, -10.0, 0.0, max_gap_s=1.2, bins=10)
    # bins centred at -9.5 ... -0.5; -6.5..-2.5 lie in the gap between -8 and -2.
    assert img.tolist() == [[1, 2, 2, 0, 0, 0, 0, 0, 3, 3]]


def test_gui_config_checks_ranges_with_the_key_path():
    with pytest.raises(ConfigError, match=r"\[gui.refresh_hz\]"):
        config_from_dict({"gui": {"refresh_hz": 500}})
    with pytest.raises(ConfigError, match=r"\[gui.frame_rcvhwm\]"):
        config_from_dict({"gui": {"frame_rcvhwm": 0}})
    cfg = msgspec.convert({"history_s": 10, "max_frame_rate_hz": 30}, GuiConfig)
    assert cfg.history_rows == 301


# ---------------------------------------------------------------------- rewards apart from test pulses


def reward(source: str, volume: float, status: str = "delivered", t: int = 10**12) -> RewardOutcome:
    return RewardOutcome(request_id=f"{source}-{volume}", status=status, reason="" if status == "delivered" else "x",
                         volume_ul=volume, open_ms=20.0, source=source, t_done=t)


def test_only_decoder_and_manual_rewards_count_as_rewards():
    from gui.model import REWARD_SOURCES
    from rig.offline.summary import REWARD_SOURCES as SUMMARY_SOURCES

    assert REWARD_SOURCES == SUMMARY_SOURCES  # the console counts what summary.json counts
    model = ConsoleModel(GuiConfig())
    for msg in (reward("decoder", 2.5), reward("manual", 2.5, t=10**12 + 10**9), reward("test_pulse", 2.6),
                reward("flush", 5.2), reward("calibration", 1.0, status="failed")):
        model.ingest(msg)
    assert (model.rewards_delivered, model.rewards_failed) == (2, 0)
    assert model.volume_ul == pytest.approx(5.0)  # not 12.8 (what went through the valve) nor 13.8
    assert model.other_pulses == 3 and model.other_volume_ul == pytest.approx(7.8)
    assert any("calibration" in line and "failed" in line for line in model.events)  # a failed pulse is not silent
    model.first_rig_ns, model.latest_rig_ns = 10**12, 10**12 + 30 * 10**9
    assert model.rewards_per_min() == pytest.approx(2 / 0.5)  # test pulses are not rewards per minute


# ---------------------------------------------------------------------- the snapshot's new fields, end to end


def test_the_tally_keeps_link_baseline_volume_and_calibration_failure_for_late_consoles():
    from rig.app.snapshot import SessionTally
    from rig.core.operator import CommandReply, decode_reply, encode
    from rig.core.schema import LinkState

    tally = SessionTally(config_from_dict({}))
    tally.ingest(LinkState(state="connected", detail="/dev/ttyACM0"))
    tally.ingest(TrialEvent(kind="baseline_start", trial=0, frame=40, detail={"frames": 9000}))
    tally.ingest(TrialEvent(kind="calibration_failed", trial=0, frame=9040, detail={"error": "flat baseline"}))
    for msg in (reward("decoder", 2.5), reward("manual", 2.5), reward("test_pulse", 2.6), reward("flush", 5.2),
                reward("decoder", 2.5, status="refused")):
        tally.ingest(msg)
    snap = tally.snapshot(session_dir="/s", endpoints={}, mode="running", children=[], config={})
    counts = snap.counts
    assert (counts.rewards_delivered, counts.rewards_failed, counts.other_pulses) == (2, 1, 2)
    assert counts.volume_ul == pytest.approx(5.0) and counts.other_volume_ul == pytest.approx(7.8)
    assert snap.link.state == "connected" and snap.baseline.start_frame == 40 and snap.baseline.frames == 9000
    assert snap.calibration_failure == "flat baseline"
    model = ConsoleModel(GuiConfig())  # a console joining now, through the wire
    model.apply_snapshot(decode_reply(encode(CommandReply(ok=True, snapshot=snap))).snapshot)
    assert (model.link_state, model.link_detail) == ("connected", "/dev/ttyACM0")
    assert model.baseline.start_frame == 40 and model.calibration_failure == "flat baseline"
    assert model.volume_ul == pytest.approx(5.0) and model.other_pulses == 2
    # A new baseline clears the failure and replaces the progress; its end clears the progress.
    tally.ingest(TrialEvent(kind="baseline_start", trial=0, frame=9100, detail={"frames": 9000}))
    assert tally.calibration_failure == "" and tally.baseline.start_frame == 9100
    tally.ingest(TrialEvent(kind="baseline_done", trial=0, frame=18100))
    tally.ingest(TrialEvent(kind="calibrated", trial=0, frame=18100))
    assert tally.baseline is None and tally.calibration_failure == ""


def test_the_bus_link_state_wins_over_an_older_snapshot():
    from rig.core.operator import LinkStatus
    from rig.core.schema import LinkState

    model = ConsoleModel(GuiConfig())
    model.apply_snapshot(Snapshot(session_dir="", endpoints={}, mode="running", link=LinkStatus(state="connected")))
    assert model.link_state == "connected"
    model.ingest(LinkState(state="lost", detail="unplugged"))
    model.apply_snapshot(Snapshot(session_dir="", endpoints={}, mode="running", link=LinkStatus(state="connected")))
    assert (model.link_state, model.link_detail) == ("lost", "unplugged")  # the bus is newer: it says on change


# ---------------------------------------------------------------------- baseline countdown, end of session


def test_the_baseline_countdown_from_the_event_or_from_the_config():
    from gui.progress import baseline_countdown
    from rig.core.codes import Mode
    from rig.core.schema import AcqStatus

    model = ConsoleModel(GuiConfig())
    model.config = {"task": {"baseline_s": 20.0}, "acquisition": {"frame_rate_hz": 30.0}}
    assert baseline_countdown(model) is None  # no decisions yet
    model.ingest(decision(100, 10**12, mode=int(Mode.BASELINE)))
    model.ingest(decision(130, 10**12, mode=int(Mode.BASELINE)))
    late = baseline_countdown(model)  # joined mid-baseline: from the config, an upper bound
    assert late.estimated and late.total == 600 and late.done == 31
    assert late.seconds_left == pytest.approx((600 - 31) / 30.0) and "at most" in late.text()
    model.ingest(TrialEvent(kind="baseline_start", trial=0, frame=90, detail={"frames": 300}))
    model.ingest(AcqStatus(frames=140, frames_dropped=0, bad_frames=0, link="ok", fps=15.0))  # measured rate wins
    model.ingest(decision(140, 10**12, mode=int(Mode.BASELINE)))
    exact = baseline_countdown(model)
    assert not exact.estimated and (exact.done, exact.total) == (51, 300)
    assert exact.seconds_left == pytest.approx(249 / 15.0)
    assert exact.text() == "baseline: 17 s left (51 of 300 frames)"
    model.ingest(decision(141, 10**12, mode=int(Mode.IDLE)))
    assert baseline_countdown(model) is None


def test_the_session_end_is_told_by_the_supervisor_or_by_every_critical_process():
    from gui.progress import session_end

    model = ConsoleModel(GuiConfig())
    snap = Snapshot(session_dir="", endpoints={}, mode="running",
                    processes={name: ProcessStatus(state="running", critical=name != "gui")
                               for name in ("acquisition", "decoder", "reward", "gui")})
    model.apply_snapshot(snap)
    assert session_end(model) == ""
    model.ingest(StateChange(process="gui", state="stopped"))  # the rig's own console: optional
    model.ingest(StateChange(process="acquisition", state="stopped"))
    model.ingest(StateChange(process="decoder", state="stopping"))
    assert session_end(model) == ""
    model.ingest(StateChange(process="reward", state="stopped"))
    assert "processes have stopped" in session_end(model)
    other = ConsoleModel(GuiConfig())
    other.ingest(Heartbeat(process="supervisor", state="stopping"))
    assert session_end(other) == "the rig is stopping"
