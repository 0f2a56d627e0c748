"""ROI kinds and dendrite -> soma links (issue 23 item 2): files, filtering, config links, suggestion, `rig link`."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from acquisition.config import RoiLink
from acquisition.roi_links import apply_links, cells_only_planes, check_parents, link_table
from acquisition.rois import DENDRITE, KIND_FILE, PARENT_FILE, SOMA, RoiFileError, RoiLinkWarning, RoiSet, load_suite2p
from acquisition.sim.config import SimConfig
from acquisition.sim.traces import TraceSim
from gui.link_match import LinkParams, suggest_links
from rig.app.cli import main
from rig.offline.session_data import load_session
from tests.plane_session import PlaneSpec, build_session, disk

SHAPE = (64, 64)


def _set(n: int, iscell: list[int] | None = None, kind: list[int] | None = None,
         parent: list[int] | None = None) -> RoiSet:
    stat = [disk((8 + 12 * (i // 5), 8 + 12 * (i % 5)), 3, SHAPE) for i in range(n)]
    cells = np.ones((n, 2)) if iscell is None else np.column_stack([iscell, iscell]).astype(float)
    return RoiSet(stat=stat, iscell=cells, Ly=SHAPE[0], Lx=SHAPE[1],
                  kind=None if kind is None else np.array(kind, np.int8),
                  parent=None if parent is None else np.array(parent, np.int32))


def test_kinds_and_parents_load_back_and_bad_files_are_named(tmp_path: Path) -> None:
    folder = _set(4, kind=[1, 1, 0, 1], parent=[2, -1, -1, 0]).save_suite2p(tmp_path / "p1")
    loaded = load_suite2p(folder)
    assert loaded.kind.tolist() == [DENDRITE, DENDRITE, SOMA, DENDRITE]
    assert loaded.parent.tolist() == [2, -1, -1, 0]
    assert _set(3).save_suite2p(tmp_path / "p0") and not (tmp_path / "p0" / KIND_FILE).exists()
    assert load_suite2p(tmp_path / "p0").kind.tolist() == [0, 0, 0]  # absent: every ROI a soma, no links

    bad = {
        "3 entries (shape (3,)) but stat.npy has 4 ROIs": (KIND_FILE, np.array([1, 1, 0], np.int8)),
        "values must be 0 (soma) or 1 (dendrite), found 3": (KIND_FILE, np.array([1, 3, 0, 1], np.int8)),
        "expected integers": (KIND_FILE, np.array([1.0, 0, 0, 1])),
        "ROI 1 has parent -5": (PARENT_FILE, np.array([2, -5, -1, 0], np.int32)),
        "ROI 2 has parent 1 but is not a dendrite": (PARENT_FILE, np.array([2, -1, 1, 0], np.int32)),
    }
    for message, (name, value) in bad.items():
        _set(4, kind=[1, 1, 0, 1], parent=[2, -1, -1, 0]).save_suite2p(folder)
        np.save(folder / name, value)
        with pytest.raises(RoiFileError, match=re.escape(message)) as err:
            load_suite2p(folder)
        assert str(folder / name) in str(err.value)
    _set(4).save_suite2p(folder)  # no links: stale files removed
    assert not (folder / KIND_FILE).exists() and not (folder / PARENT_FILE).exists()
    np.save(folder / PARENT_FILE, np.array([0, -1, -1, -1], np.int32))  # a parent without kinds links a soma
    with pytest.raises(RoiFileError, match="no roi_kind.npy: every ROI is a soma"):
        load_suite2p(folder)


def test_cells_only_renumbers_parents_and_drops_links_to_filtered_somata(tmp_path: Path) -> None:
    bci = _set(5, iscell=[1, 0, 1, 1, 0])
    dend = _set(4, iscell=[1, 1, 0, 1], kind=[1, 1, 1, 1], parent=[0, 1, 2, 3])
    with pytest.warns(RoiLinkWarning, match=r"dendrite ROI 1 \(now 1\) lost its link: its soma, BCI-plane ROI 1"):
        sets = cells_only_planes({0: bci, 1: dend}, bci_plane=0)
    assert sets[0].n_rois == 3 and sets[1].n_rois == 3
    assert sets[1].parent.tolist() == [0, -1, 2]  # soma 0 -> 0, soma 1 filtered, soma 3 -> 2 (row 2 dropped)
    assert sets[1].kind.tolist() == [1, 1, 1] and len(sets[1].link_notes) == 1
    assert link_table(sets) == [(1, 0, 0), (1, 2, 2)]
    # saved and reloaded: extracted ROIs first, so the parents index the saved BCI plane
    sets[0].save_suite2p(tmp_path / "bci")
    sets[1].save_suite2p(tmp_path / "dend")
    reloaded = {0: load_suite2p(tmp_path / "bci"), 1: load_suite2p(tmp_path / "dend")}
    assert reloaded[1].parent.tolist() == [0, -1, 2, -1] and reloaded[1].kind.tolist() == [1, 1, 1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more is lost on a second filtering
        again = cells_only_planes(reloaded, 0)
    assert again[1].parent.tolist() == [0, -1, 2]
    with pytest.raises(RoiFileError, match=r"plane 1 ROI 0 is linked to soma 7, but the BCI plane \(0\) has 5 ROIs"):
        check_parents({0: bci, 1: _set(1, kind=[1], parent=[7])}, 0)


def test_config_links_apply_and_name_a_missing_soma_or_dendrite() -> None:
    sets = {0: _set(3), 1: _set(4, kind=[1, 1, 1, 1], parent=[0, -1, -1, -1])}
    linked = apply_links(sets, [RoiLink(plane=1, roi=1, soma=2), RoiLink(plane=1, roi=0, soma=1)], 0)
    assert linked[1].parent.tolist() == [1, 2, -1, -1] and linked[1].kind.tolist() == [1, 1, 1, 1]
    assert "replaces the folder's link of ROI 0 to soma 0" in linked[1].link_notes[0]
    assert sets[1].parent.tolist() == [0, -1, -1, -1]  # the input sets are left alone
    with pytest.raises(RoiFileError) as err:
        apply_links(sets, [RoiLink(plane=1, roi=1, soma=9)], 0)
    assert str(err.value) == ("acquisition.rois.links[0] (plane=1, roi=1, soma=9): soma 9 does not exist: the BCI "
                              "plane (0) has 3 ROIs (0..2)")
    with pytest.raises(RoiFileError, match=r"links\[1\] \(plane=1, roi=7, soma=0\): dendrite 7 does not exist: "
                                           r"plane 1 has 4 ROIs \(0..3\)"):
        apply_links(sets, [RoiLink(plane=1, roi=0, soma=0), RoiLink(plane=1, roi=7, soma=0)], 0)
    with pytest.raises(RoiFileError, match="there is no plane 2"):
        apply_links(sets, [RoiLink(plane=2, roi=0, soma=0)], 0)
    with pytest.raises(RoiFileError, match=r"already linked to soma 0 by acquisition.rois.links\[0\]"):
        apply_links(sets, [RoiLink(plane=1, roi=2, soma=0), RoiLink(plane=1, roi=2, soma=1)], 0)


def test_suggestion_uses_offset_correlation_and_limits() -> None:
    rng = np.random.default_rng(0)
    somata = [disk((20, 20), 4, SHAPE), disk((20, 30), 4, SHAPE)]
    dend = [disk((25, 25), 2, SHAPE)]  # halfway between both somata: x-y alone cannot decide
    spikes = rng.poisson(0.05, (2, 3000)).astype(float)
    kernel = np.exp(-np.arange(30) / 8.0)
    soma_tr = np.stack([np.convolve(s, kernel)[:3000] for s in spikes]) + rng.normal(0, 0.3, (2, 3000))
    dend_tr = 0.5 * soma_tr[1:2] + rng.normal(0, 0.3, (1, 3000))
    s = suggest_links(dend, somata, dend_tr, soma_tr)
    assert s.parent.tolist() == [1] and s.candidates[0][0].corr > 0.3 > abs(s.candidates[0][1].corr)
    only_xy = suggest_links(dend, somata, params=LinkParams(offset_yx=(5.0, 5.0)))  # dendrite = soma 0 + offset
    assert only_xy.parent.tolist() == [0] and only_xy.candidates[0][0].distance_px == pytest.approx(0, abs=0.5)
    far = suggest_links([disk((50, 50), 2, SHAPE)], somata)
    assert far.parent.tolist() == [-1] and far.candidates == [[]]  # beyond max_distance_px: no candidate
    two = suggest_links([disk((20, 21), 2, SHAPE), disk((20, 19), 2, SHAPE)], somata[:1])
    assert sorted(two.parent.tolist()) == [-1, 0]  # max_per_soma = 1
    both = suggest_links([disk((20, 21), 2, SHAPE), disk((20, 19), 2, SHAPE)], somata[:1],
                         params=LinkParams(max_per_soma=2))
    assert both.parent.tolist() == [0, 0]
    with pytest.raises(ValueError, match="give traces for both planes"):
        suggest_links(dend, somata, dend_tr, None)


def _sim_planes(seed: int, volumes: int) -> tuple[TraceSim, list[dict], list[dict], np.ndarray, np.ndarray]:
    """The simulator's two planes (somata, their apical dendrites): circular ROIs and neuropil-corrected F."""
    cfg = SimConfig(seed=seed, n_planes=2, n_cells=120, height_px=384, width_px=384)
    sim = TraceSim(cfg, 30.0, up=[0, 1, 2], down=[3, 4, 5])
    assert sim.dendrites is not None
    soma_f = np.zeros((cfg.n_cells, volumes, 2))
    dend_f = np.zeros((sim.dend_parent.size, volumes, 2))
    for v in range(volumes):
        F, Fneu = sim.step()
        soma_f[:, v, 0], soma_f[:, v, 1] = F, Fneu
        dend_f[:, v, 0], dend_f[:, v, 1] = sim.dend_F, sim.dend_Fneu
    shape = (cfg.height_px, cfg.width_px)
    soma_stat = [disk(c, r, shape) for c, r in zip(sim.centers, sim.radius, strict=True)]
    dend_stat = [disk(c, r, shape) for c, r in zip(sim.dend_centers, sim.dendrites.layout.radius, strict=True)]
    return sim, soma_stat, dend_stat, soma_f, dend_f


def test_suggestion_recovers_the_simulators_true_parents(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sim, soma_stat, dend_stat, soma_f, dend_f = _sim_planes(seed=5, volumes=2000)
    truth = sim.dend_parent
    with_activity = suggest_links(dend_stat, soma_stat, dend_f[..., 0] - 0.7 * dend_f[..., 1],
                                  soma_f[..., 0] - 0.7 * soma_f[..., 1])
    xy_only = suggest_links(dend_stat, soma_stat)
    right = float(np.mean(with_activity.parent == truth))
    wrong = int(np.sum((with_activity.parent >= 0) & (with_activity.parent != truth)))
    print(f"true parents recovered: {right:.3f} with activity ({wrong} wrong), "
          f"{float(np.mean(xy_only.parent == truth)):.3f} from x-y alone, of {truth.size} dendrites")
    assert right >= 0.9 and wrong <= 0.05 * truth.size
    assert right > float(np.mean(xy_only.parent == truth))  # the activity is what decides

    # the same through `rig link SESSION --suggest --write` on a session folder holding both planes
    n_d = truth.size
    folder = build_session(tmp_path / "s", [
        PlaneSpec(soma_stat, soma_f[..., 0].T, soma_f[..., 1].T),
        PlaneSpec(dend_stat, dend_f[..., 0].T, dend_f[..., 1].T, kind=np.ones(n_d, np.int8), truth_parent=truth),
    ], (384, 384))
    assert main(["link", str(folder), "--suggest", "--write", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads(out[-1])["planes"]["1"]
    assert summary["truth_agreement"] == pytest.approx(right, abs=1e-3) and summary["traces"] is True
    assert any(line.strip().startswith("dendrite") and "truth" in line for line in out)
    plane1 = load_session(folder).planes[1]
    assert plane1.parent.tolist() == with_activity.parent.tolist() and (plane1.kind == DENDRITE).all()
    assert main(["link", str(folder)]) == 0  # without --suggest: the links now in the folder
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["planes"]["1"]["linked"] == summary["suggested"]
    assert main(["link", str(folder), "--write"]) == 2


def test_rig_link_on_suite2p_folders_writes_the_dendrite_planes_files(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    spikes = rng.poisson(0.05, (2, 1500)).astype(float)
    kernel = np.exp(-np.arange(30) / 8.0)
    soma_f = np.stack([np.convolve(s, kernel)[:1500] for s in spikes]) + rng.normal(0, 0.3, (2, 1500)) + 10
    bci = RoiSet(stat=[disk((20, 20), 4, SHAPE), disk((20, 30), 4, SHAPE)], iscell=np.ones((2, 2)), Ly=64, Lx=64)
    dend = RoiSet(stat=[disk((25, 25), 2, SHAPE)], iscell=np.ones((1, 2)), Ly=64, Lx=64)
    p0, p1 = bci.save_suite2p(tmp_path / "plane0"), dend.save_suite2p(tmp_path / "plane1")
    np.save(p0 / "F.npy", soma_f)
    np.save(p0 / "Fneu.npy", np.zeros_like(soma_f))
    np.save(p1 / "F.npy", 0.5 * soma_f[1:2] + rng.normal(0, 0.3, (1, 1500)))
    np.save(p1 / "Fneu.npy", np.zeros((1, 1500)))
    assert main(["link", str(p0), str(p1), "--suggest", "--write"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["planes"]["1"]["suggested"] == 1 and summary["planes"]["1"]["traces"] is True
    assert summary["written"] == [str(p1)]
    assert np.load(p1 / KIND_FILE).tolist() == [1] and np.load(p1 / PARENT_FILE).tolist() == [1]
    assert not (p0 / KIND_FILE).exists()  # the BCI plane's folder is never written
    assert main(["link", str(p0), str(p1), "--suggest", "--bci", "2"]) == 2
    assert "--bci 2: there are 2 folders (0..1)" in capsys.readouterr().err
