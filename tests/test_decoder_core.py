"""DecoderCore on its own: what it sends to its output for frames and operator commands (the live process and
replay are both outputs, tested in test_session_offline.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from decoder.config import DecoderConfig, TaskConfig
from decoder.core import DecoderCore, decision_record_dtype

N_ROIS = 8


class Recorder:
    """A DecoderOutput that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> None:
        self.calls.append(("event", {"kind": kind, **fields}))

    def trial_event(self, kind: str, trial: int, frame: int, hits: int, trials: int, detail: dict) -> None:
        self.calls.append(("trial_event", kind))

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        self.calls.append(("calibration", cal))

    def reward_request(self, request_id: str, volume_ul: float, source: str, frame: int, *, override: bool = False,
                       issued_by: str = "") -> None:
        self.calls.append(("reward_request", (request_id, volume_ul, source, frame, override, issued_by)))

    def decision(self, res: Any) -> None:
        self.calls.append(("decision", res.frame))

    def refused(self, command: str, error: str) -> None:
        self.calls.append(("refused", command))

    def busy(self, what: str) -> contextlib.AbstractContextManager[None]:
        self.calls.append(("busy", what))
        return contextlib.nullcontext()

    def of(self, kind: str) -> list[Any]:
        return [value for what, value in self.calls if what == kind]


def make_core() -> tuple[DecoderCore, Recorder]:
    out = Recorder()
    core = DecoderCore(DecoderConfig(up=[0, 1], down=[2, 3]), TaskConfig(baseline_s=2.0), 4.0, N_ROIS, 10.0, out)
    return core, out


def test_a_manual_reward_carries_the_operators_override_and_name_to_the_reward_process():
    core, out = make_core()
    assert core.apply_control("manual_reward", {"volume_ul": 2.5, "override": True}, issued_by="alice")
    assert core.apply_control("manual_reward", {}, issued_by="bob")
    assert out.of("reward_request") == [("man-1", 2.5, "manual", -1, True, "alice"),
                                        ("man-2", 4.0, "manual", -1, False, "bob")]
    applied = [e for e in out.of("event") if e["kind"] == "applied"]
    assert [e["after_frame"] for e in applied] == [-1, -1]


def test_a_command_the_mode_does_not_allow_is_refused_and_recorded_never_raised():
    core, out = make_core()
    assert core.apply_control("start_bci", {}) is False  # not calibrated
    failed = [e for e in out.of("event") if e["kind"] == "command_failed"]
    assert len(failed) == 1 and "start BCI" in failed[0]["error"]
    assert out.of("refused") == ["start_bci"]


def test_each_frame_is_decided_before_its_row_is_filled_and_rows_carry_the_decision():
    core, out = make_core()
    rows = np.zeros(5, dtype=decision_record_dtype(N_ROIS))
    rng = np.random.default_rng(0)
    informational = [0, 256, 512, 768, 0]  # AFTER_GAP, NOT_REGISTERED: recorded, not bad frames
    for i in range(5):
        core.decide(i, 100 + rng.normal(size=N_ROIS), 10 + rng.normal(size=N_ROIS), flags=informational[i],
                    row=rows[i])
    assert out.of("decision") == [0, 1, 2, 3, 4]
    assert rows["frame"].tolist() == [0, 1, 2, 3, 4] and rows["flags"].tolist() == informational
    assert core.frames == 5 and core.last_frame == 4
    assert np.isfinite(rows["dff"]).all()
