"""A live session that refined its given reference (acquisition.reg_refine) replays bit-exactly from its movie.

One short real session on the simulated rig (every process, real sockets) with ``refine_reference =
"always"``: the acquisition process refines the sim's refImg in a background thread, switches at a frame
that depends on the thread's timing, records ``reference_refined`` and saves both references. The replay
must register the frames before that frame against the given reference and the rest against the saved
refined one; a replay that used the refined one from frame 0 must not match.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig.core.store import read_events
from rig.offline.replay import check, replay
from rig.offline.session_data import SessionError, load_session
from tests.conftest import REPO

SIM = REPO / "hardware_configs" / "sim.toml"
REFINE_FRAMES = 20
OVERRIDES = ["acquisition.sim.height_px=96", "acquisition.sim.width_px=96", "acquisition.sim.n_cells=20",
             "session.save_frames=true", "acquisition.registration.refine_reference=always",
             f"acquisition.registration.refine_frames={REFINE_FRAMES}"]


@pytest.fixture(scope="module")
def refined_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    out = tmp_path_factory.mktemp("refined")
    run = subprocess.run([sys.executable, "-m", "rig.app.cli", "run", str(SIM), "--headless", "--duration", "4",
                          "--sessions-dir", str(out), *sets], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    # 4 s is all baseline: "no trial ran" is the one problem expected (exit code 1), anything else fails
    assert [p.split(":")[0] for p in summary["problems"]] == ["no trial ran"], run.stderr[-3000:]
    assert run.returncode == 1 and summary["frames"] > 100
    return Path(summary["session"])


def _switch_frame(session: Path) -> int:
    events = [e for e in read_events(session / "acquisition" / "events.jsonl") if e["kind"] == "reference_refined"]
    assert len(events) == 1, "the live session never switched to the refined reference"
    return int(events[0]["frame"])


def test_the_live_session_records_the_switch_and_both_references(refined_session: Path) -> None:
    rois = refined_session / "acquisition" / "rois"
    switch = _switch_frame(refined_session)
    given, refined = np.load(rois / "reference_given.npy"), np.load(rois / "reference.npy")
    assert given.shape == refined.shape == (96, 96) and not np.array_equal(given, refined)
    frames = load_session(refined_session).frames
    assert frames is not None and REFINE_FRAMES <= switch < int(frames["frame"][-1]) - 30


def test_replay_switches_where_the_live_session_did_and_matches(refined_session: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-exact, with the saved references only: refining again in the replay would be an error."""
    import acquisition.pipeline

    def no_refinement(*args: object, **kwargs: object) -> None:
        raise AssertionError("the replay refined the reference itself instead of loading the saved one")

    monkeypatch.setattr(acquisition.pipeline, "refine_reference", no_refinement)
    session = load_session(refined_session)
    run = replay(session, progress=False)
    report = check(session, run)
    assert report.mismatches == 0, [m.to_dict() for m in report.first_mismatches]
    assert run.source == "movie" and report.traces_checked == len(session.frames) > 100  # type: ignore[arg-type]


def test_a_replay_that_ignored_the_switch_would_not_match(refined_session: Path, tmp_path: Path) -> None:
    """The session as if the refined reference had been there from frame 0: the early frames differ."""
    switch = _switch_frame(refined_session)
    copy = Path(shutil.copytree(refined_session, tmp_path / refined_session.name))
    (copy / "acquisition" / "rois" / "reference_given.npy").unlink()
    with pytest.raises(SessionError, match="refined at frame"):  # the event without the given reference
        replay(load_session(copy), progress=False)
    log = copy / "acquisition" / "events.jsonl"
    lines = [line for line in log.read_text().splitlines() if '"reference_refined"' not in line]
    log.write_text("\n".join(lines) + "\n")
    session = load_session(copy)
    report = check(session, replay(session, progress=False), max_details=1000)
    traces = [m.frame for m in report.first_mismatches if m.what == "trace"]
    assert report.mismatches > 0 and traces and min(traces) < switch


def test_a_what_if_with_other_registration_settings_decides_the_reference_itself(refined_session: Path) -> None:
    """``refine_reference = "never"`` in a what-if: the given reference throughout, so the frames up to the
    live switch are registered as live and the later ones are not (a what-if with the same registration
    settings reproduces the live switch: the bit-exact replay above)."""
    from rig.offline.whatif import whatif_config

    switch = _switch_frame(refined_session)
    session = load_session(refined_session)
    cfg = whatif_config(session, None, ["acquisition.registration.refine_reference=never"])
    traces = replay(session, cfg, progress=False).traces
    recorded = session.frames
    assert traces is not None and recorded is not None
    before = recorded["frame"] < switch
    for name in ("dy", "dx", "corr"):
        np.testing.assert_array_equal(traces[name][before], recorded[name][before])
    assert not np.array_equal(traces["dy"][~before], recorded["dy"][~before])
