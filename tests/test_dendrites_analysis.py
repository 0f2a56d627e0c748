"""``rig dendrites`` on simulated two-plane sessions (``rig sim session``): the instructive index finds what the
learning rule put into the dendrites, and nothing when it put nothing in.

Sessions at 5 frames/s with a 3-min baseline: vectorized 40 min (its down cells' signal is a suppression of
events, the weaker half, and needs the longer session), scalar and none 25 min. About 20 s of simulation.
Seed 1 for the vectorized session: in seed 0 the down cells' instructive signal is too weak to decide in 40 min
even in the ground truth (the index of the true dendrite-specific calcium: +0.017, p = 0.08); docs/DENDRITES.md
lists every seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rig.app.cli import main
from rig.app.sim_learn import LearnSpec
from rig.app.sim_session import run_session
from rig.offline.dendrites import analyse, summary_json
from rig.offline.dendrites_data import DendriteError, load_dendrite_data
from rig.offline.dendrites_plots import report_sections
from rig.offline.replay import check, replay
from rig.offline.session_data import load_session

MINUTES = {"vectorized": 40.0, "scalar": 25.0, "none": 25.0}
SEEDS = {"vectorized": 1, "scalar": 0, "none": 0}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dendrite_sessions")
    out = {}
    for rule, minutes in MINUTES.items():
        out[rule] = root / rule
        run_session(LearnSpec(rule=rule, minutes=minutes, baseline_minutes=3.0, fps=5.0, seed=SEEDS[rule]), out[rule],
                    progress=False)
    return out


def _analyse(path: Path, **kw: object) -> dict:
    session = load_session(path)
    data = load_dendrite_data(session)
    return summary_json(str(path), data, analyse(data, progress=False, **kw))


def test_vectorized_up_and_down_opposite(sessions: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dendrites", str(sessions["vectorized"]), "--out", str(tmp_path / "plots"), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["n_up"] == 4 and result["n_down"] == 4
    up, down = result["up_index"], result["down_index"]
    assert np.sign(up) != np.sign(down), result
    assert result["p_opposite"] < 0.01, result
    for role in ("up", "down"):  # each CI excludes 0
        lo, hi = result[f"{role}_ci95"]
        assert lo * hi > 0, (role, result[f"{role}_ci95"])
    assert sorted(Path(p).name for p in result["plots"]) == ["dendrites_aligned.png", "dendrites_index.png"]
    assert all(Path(p).stat().st_size > 10_000 for p in result["plots"])


def test_scalar_up_and_down_same_sign(sessions: dict[str, Path]) -> None:
    result = _analyse(sessions["scalar"])
    assert np.sign(result["up_index"]) == np.sign(result["down_index"]), result
    assert result["p_same_sign"] < 0.05 and result["p_opposite"] == 1.0, result


def test_none_indistinguishable_from_zero(sessions: dict[str, Path]) -> None:
    result = _analyse(sessions["none"])
    for role in ("up", "down", "other"):
        lo, hi = result[f"{role}_ci95"]
        assert lo < 0 < hi, (role, result)
        assert result[f"{role}_p"] > 0.05, (role, result)
    assert result["p_opposite"] > 0.05


def test_without_the_soma_regression_none_looks_opposite(sessions: dict[str, Path]) -> None:
    """The confound the analysis exists for: the cursor is made of the somata, the raw dendrite follows its soma,
    so a mouse with no instructive signal at all shows up/down indices of opposite sign (as vectorized would)."""
    raw = _analyse(sessions["none"], soma="none", leave_one_out=False)
    assert np.sign(raw["up_index"]) != np.sign(raw["down_index"]), raw
    assert raw["p_opposite"] < 0.01, raw


def _copy(session: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(session, copy)
    return copy


def test_clear_errors(sessions: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = _copy(sessions["none"], tmp_path)
    parent_file = session / "acquisition" / "planes" / "plane1" / "rois" / "roi_parent.npy"
    parent = np.load(parent_file)

    np.save(parent_file, np.where(np.arange(parent.size) == 3, 100, parent).astype(np.int32))
    with pytest.raises(DendriteError, match=r"ROI 3 is linked to soma 100, but the BCI plane (\(0\) )?has 100 ROIs"):
        load_dendrite_data(load_session(session))

    np.save(parent_file, np.full(parent.size, -1, np.int32))
    with pytest.raises(DendriteError, match="no links: .*none linked to a soma"):
        load_dendrite_data(load_session(session))
    np.save(parent_file, parent)

    events = session / "decoder" / "events.jsonl"
    lines = events.read_text().splitlines()
    events.write_text("".join(line + "\n" for line in lines if '"event":"hit"' not in line
                              and '"event":"miss"' not in line))
    with pytest.raises(DendriteError, match="no trials"):
        analyse(load_dendrite_data(load_session(session)), progress=False)

    resolved = session / "config.resolved.json"  # the same session as if it had imaged one plane
    config = json.loads(resolved.read_text())
    config["acquisition"]["n_planes"] = config["acquisition"]["sim"]["n_planes"] = 1
    resolved.write_text(json.dumps(config))
    assert report_sections(load_session(session)) == []  # a one-plane session's report has no dendrite section
    assert main(["dendrites", str(session), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "no dendrite plane" in captured.err and json.loads(captured.out.splitlines()[-1])["ok"] is False


def test_the_session_replays(sessions: dict[str, Path]) -> None:
    """The simulated session is a session: the decoder, re-run on its recorded traces, decides every frame alike."""
    session = load_session(sessions["none"])
    report = check(session, replay(session, progress=False))
    assert report.decisions_checked == len(session.decisions) and report.events_checked > 50
    assert report.mismatches == 0, report.first_mismatches


def test_report_section(sessions: dict[str, Path]) -> None:
    sections = report_sections(load_session(sessions["scalar"]))
    assert [key for key, _title, _draw in sections] == ["dendrites_index", "dendrites_aligned"]
