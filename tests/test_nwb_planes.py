"""Several planes in a session: the loader (`SessionData.planes`) and the NWB export (issue 23 item 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rig.offline.nwb_export import NwbMetadata, export_nwb
from rig.offline.session_data import SessionError, load_session
from tests.plane_session import PlaneSpec, build_session, disk

SHAPE = (32, 32)
VOLUMES = 40


def _two_planes(tmp_path: Path, name: str = "s", parent: list[int] | None = None) -> Path:
    """BCI plane: 5 ROIs, row 2 not a cell (4 extracted); plane 1: 3 dendrites linked to BCI rows 3, 0 and none."""
    rng = np.random.default_rng(1)
    somata = [disk((6 + 6 * i, 8), 2, SHAPE) for i in range(5)]
    dendrites = [disk((24, 6 + 8 * i), 2, SHAPE) for i in range(3)]
    soma = PlaneSpec(somata, rng.normal(100, 5, (VOLUMES, 5)), rng.normal(50, 2, (VOLUMES, 5)),
                     iscell=np.array([[1, 1], [1, 1], [0, 0], [1, 1], [1, 1]], float),
                     movie=rng.integers(0, 4000, (VOLUMES, *SHAPE)))
    dend = PlaneSpec(dendrites, rng.normal(80, 5, (VOLUMES, 3)), rng.normal(40, 2, (VOLUMES, 3)),
                     kind=np.ones(3, np.int8), parent=np.array(parent or [3, 0, -1], np.int32),
                     movie=rng.integers(0, 4000, (VOLUMES, *SHAPE)))
    return build_session(tmp_path / name, [soma, dend], SHAPE, fps=15.0)


def test_planes_load_with_parents_in_the_bci_planes_extracted_rois(tmp_path: Path) -> None:
    session = load_session(_two_planes(tmp_path))
    assert session.n_planes == 2 and session.bci_plane == 0
    bci, plane1 = session.planes
    assert bci.is_bci and bci.frames is session.frames and bci.n_rois == 4
    assert plane1.name == "plane1" and plane1.n_rois == 3 and len(plane1.frames) == VOLUMES
    assert plane1.kind.tolist() == [1, 1, 1] and bci.kind.tolist() == [0, 0, 0, 0]
    assert plane1.parent.tolist() == [2, 0, -1]  # BCI row 3 is extracted ROI 2 (row 2 is not a cell)
    assert plane1.movie().shape == (VOLUMES, *SHAPE)


def test_damaged_plane_files_are_named(tmp_path: Path) -> None:
    folder = _two_planes(tmp_path, "missing_soma", parent=[7, 0, -1])
    with pytest.raises(SessionError, match="plane 1 ROI 0 is linked to soma 7, but the BCI plane \\(0\\) has 5 ROIs"):
        _ = load_session(folder).planes
    folder = _two_planes(tmp_path, "torn")
    rec = folder / "acquisition" / "planes" / "plane1" / "frames.rec"
    rec.write_bytes(rec.read_bytes()[:-7])  # a torn last row is noted, not an error
    session = load_session(folder)
    assert len(session.planes[1].frames) == VOLUMES - 1
    assert any(note.startswith("plane1/frames.rec: ignored a torn final record") for note in session.notes)
    (Path(str(rec) + ".json")).write_text("{not json", encoding="utf-8")
    with pytest.raises(SessionError, match="plane1"):
        _ = load_session(folder).planes
    shutil.rmtree(folder / "acquisition" / "planes")
    with pytest.raises(SessionError, match="planes/plane1: missing: the session's config says n_planes = 2"):
        _ = load_session(folder).planes


def test_nwb_has_one_imaging_plane_per_plane_with_kinds_links_fluorescence_and_movies(tmp_path: Path) -> None:
    from pynwb import NWBHDF5IO

    session = load_session(_two_planes(tmp_path))
    out = export_nwb(session, tmp_path / "two.nwb", NwbMetadata(include_movie=True), progress=False)
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert set(nwb.imaging_planes) == {"plane0", "plane1"}
        assert nwb.imaging_planes["plane1"].imaging_rate == pytest.approx(15.0)
        segs = nwb.processing["ophys"]["ImageSegmentation"]
        bci, dend = segs["PlaneSegmentation"], segs["PlaneSegmentation_plane1"]
        assert dend.imaging_plane.name == "plane1" and len(bci) == 4 and len(dend) == 3
        assert list(dend["roi_kind"][:]) == ["dendrite"] * 3 and list(dend["parent_soma"][:]) == [2, 0, -1]
        assert list(bci["roi_kind"][:]) == ["soma"] * 4 and list(bci["parent_soma"][:]) == [-1] * 4
        fluo = nwb.processing["ophys"]["Fluorescence"]
        f1 = fluo["F_plane1"]
        np.testing.assert_allclose(f1.data[:], session.planes[1].frames["F"])
        assert f1.rois.table is dend and fluo["F"].rois.table is bci
        # plane 1's frames come half a volume after plane 0's, on the same clock
        assert f1.timestamps[0] - fluo["F"].timestamps[0] == pytest.approx(1 / 30.0, abs=1e-6)
        np.testing.assert_array_equal(nwb.acquisition["TwoPhotonSeries_plane1"].data[:],
                                      np.asarray(session.planes[1].movie()))
        assert nwb.acquisition["TwoPhotonSeries"].imaging_plane.name == "plane0"


def test_single_plane_export_is_unchanged(tmp_path: Path) -> None:
    from pynwb import NWBHDF5IO

    rng = np.random.default_rng(2)
    folder = build_session(tmp_path / "one", [PlaneSpec([disk((8, 8), 2, SHAPE), disk((20, 20), 2, SHAPE)],
                                                        rng.normal(100, 5, (VOLUMES, 2)),
                                                        rng.normal(50, 2, (VOLUMES, 2)))], SHAPE)
    session = load_session(folder)
    assert session.n_planes == 1 and session.planes[0].is_bci
    out = export_nwb(session, tmp_path / "one.nwb", progress=False)
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert set(nwb.imaging_planes) == {"plane0"}
        segs = nwb.processing["ophys"]["ImageSegmentation"]
        assert set(segs.plane_segmentations) == {"PlaneSegmentation"}
        assert "roi_kind" not in segs["PlaneSegmentation"].colnames
        assert set(nwb.processing["ophys"]["Fluorescence"].roi_response_series) == {"F", "Fneu"}
