"""The supervisor's snapshot: what it folds from the bus, and that a console decodes what it sends."""

from __future__ import annotations

from gui.config import GuiConfig
from gui.model import ConsoleModel
from rig.app.config import config_from_dict
from rig.app.processes import PROCESSES, Child
from rig.app.snapshot import WARNINGS_SENT, SessionTally
from rig.core.operator import Calibration, CommandReply, Ensembles, decode_reply, encode
from rig.core.schema import CalibrationResult, Heartbeat, RewardOutcome, RigWarning, TrialEvent


def outcome(status: str, source: str = "decoder") -> RewardOutcome:
    return RewardOutcome(request_id="r", status=status, reason="", volume_ul=2.0, open_ms=20.0, source=source)


def test_the_tally_folds_counters_calibration_ensembles_and_warnings():
    tally = SessionTally(config_from_dict({"decoder": {"up": [1, 2], "down": [3]}, "session": {"mouse_id": "M3"}}))
    assert tally.ensembles == Ensembles(up=[1, 2], down=[3]) and tally.metadata["mouse_id"] == "M3"
    tally.ingest(TrialEvent(kind="hit", trial=4, frame=100, hits=3, trials=4))
    tally.ingest(TrialEvent(kind="ensembles", trial=4, frame=101, hits=3, trials=4, detail={"up": [7], "down": [8, 9]}))
    for msg in (outcome("delivered"), outcome("delivered", "manual"), outcome("refused"),
                outcome("delivered", "test_pulse")):  # a test pulse is not a reward
        tally.ingest(msg)
    tally.ingest(CalibrationResult(threshold=0.9, feedback_min=0.1, feedback_max=0.9, predicted_hit_rate=0.5,
                                   method="resample", baseline_frames=300, seq=5, sender="decoder", t_ns=77))
    tally.ingest(Heartbeat(process="decoder", state="running"))  # nothing for the snapshot
    for i in range(60):
        tally.ingest(RigWarning(process="acquisition", code="bad_frame", message=f"frame {i}"))
    tally.warn("gui", "no heartbeat for 3.0 s")
    assert (tally.counts.trials, tally.counts.hits) == (4, 3)
    assert (tally.counts.rewards_delivered, tally.counts.rewards_failed) == (2, 1)
    assert tally.ensembles == Ensembles(up=[7], down=[8, 9])
    assert tally.calibration == Calibration(threshold=0.9, feedback_min=0.1, feedback_max=0.9,
                                            predicted_hit_rate=0.5, method="resample", baseline_frames=300)
    children = [Child(entry) for entry in PROCESSES]
    children[1].state, children[1].stats = "running", {"frames": 12.0}
    snap = tally.snapshot(session_dir="/s", endpoints={"command": "tcp://h:1"}, mode="running", children=children,
                          config={"k": 1})
    assert len(snap.warnings) == WARNINGS_SENT and snap.warnings[-1].code == ""  # the supervisor's own
    assert snap.processes["acquisition"].stats == {"frames": 12.0} and not snap.processes["gui"].critical
    tally.ingest(TrialEvent(kind="hit", trial=5, frame=200, hits=4, trials=5))
    assert snap.counts.trials == 4  # a snapshot already built does not change


def test_a_console_joining_after_calibration_gets_the_calibration():
    tally = SessionTally(config_from_dict({}))
    tally.ingest(CalibrationResult(threshold=1.5, feedback_min=0.0, feedback_max=1.5, predicted_hit_rate=0.4,
                                   method="resample", curve_thresholds=[1.0, 1.5], curve_hit_rates=[0.6, 0.4],
                                   predicted_hit_rate_ci95=[0.2, 0.7], warnings=["the interval is wide"]))
    tally.ingest(outcome("delivered"))
    snap = tally.snapshot(session_dir="/s", endpoints={}, mode="running", children=[], config={})
    wire = encode(CommandReply(ok=True, snapshot=snap))  # what the command socket sends
    model = ConsoleModel(GuiConfig())
    model.apply_snapshot(decode_reply(wire).snapshot)
    assert model.calibration == {"threshold": 1.5, "feedback_min": 0.0, "feedback_max": 1.5,
                                 "predicted_hit_rate": 0.4, "method": "resample", "curve_thresholds": [1.0, 1.5],
                                 "curve_hit_rates": [0.6, 0.4], "baseline_frames": 0,
                                 "predicted_hit_rate_ci95": [0.2, 0.7], "warnings": ["the interval is wide"]}
    assert model.rewards_before_join == 1
    # The bus path gives the console the very same dict.
    bus = ConsoleModel(GuiConfig())
    bus.ingest(CalibrationResult(threshold=1.5, feedback_min=0.0, feedback_max=1.5, predicted_hit_rate=0.4,
                                 method="resample", curve_thresholds=[1.0, 1.5], curve_hit_rates=[0.6, 0.4],
                                 predicted_hit_rate_ci95=[0.2, 0.7], warnings=["the interval is wide"]))
    assert bus.calibration == model.calibration
