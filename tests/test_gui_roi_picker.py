"""The ROI picker with real Qt (offscreen): draw, move and delete ROIs by clicking on the mean image, save them
in suite2p layout, rank, suggest, and write the ensembles into a rig config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PyQt6 import QtCore

from acquisition.rois import load_suite2p
from gui.roi_folder import disk_roi, load_roi_folder
from gui.roi_picker import RoiPicker

LEFT = QtCore.Qt.MouseButton.LeftButton
SHAPE = (64, 64)
#: (y, x) of the cells in the movie; cell 3 is dim (its F0 sits below the noise floor)
CELLS = [(12, 12), (12, 50), (50, 12), (50, 50)]


def _plane(tmp_path: Path) -> Path:
    """A registered movie with 4 active cells and ops.npy, as rig detect leaves it, without ROIs yet."""
    rng = np.random.default_rng(0)
    T, fs = 600, 30.0
    movie = 300.0 + rng.normal(0, 3.0, (T, *SHAPE))
    kernel = np.exp(-np.arange(60) / 20.0)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for k, (cy, cx) in enumerate(CELLS):
        trace = 200.0 * np.convolve(rng.random(T) < 0.4 / fs, kernel)[:T]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
        movie[:, disk] += (trace[:, None] + (100.0 if k < 3 else -300.0))
    plane = tmp_path / "suite2p" / "plane0"
    plane.mkdir(parents=True)
    movie.astype(np.int16).tofile(plane / "data.bin")
    ops = {"Ly": SHAPE[0], "Lx": SHAPE[1], "fs": fs, "meanImg": movie.mean(0).astype(np.float32)}
    np.save(plane / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    return plane


@pytest.fixture
def picker(qtbot, tmp_path):
    plane = _plane(tmp_path)
    config = tmp_path / "rig.toml"
    config.write_text('[decoder]\ndecoder = "two_population"\nup = [0, 1, 2, 3]\ndown = [4, 5, 6, 7]\n')
    window = RoiPicker(load_roi_folder(plane), config=config, diameter_px=10.0)
    qtbot.addWidget(window)
    window.resize(900, 600)
    window.show()
    qtbot.waitExposed(window)
    return window


def _click(qtbot, picker: RoiPicker, y: float, x: float) -> None:
    qtbot.mouseClick(picker.graphics.viewport(), LEFT, pos=picker.frame_to_widget(y + 0.5, x + 0.5))


def test_rois_drawn_moved_and_deleted_by_hand_are_saved_in_suite2p_layout(qtbot, picker):
    picker.mode_combo.setCurrentText("draw")
    for cy, cx in [*CELLS, (30, 30)]:
        _click(qtbot, picker, cy, cx)
    assert picker.folder.n == 5 and picker.stale
    picker.mode_combo.setCurrentText("delete")
    _click(qtbot, picker, 30, 30)
    assert picker.folder.n == 4
    picker.mode_combo.setCurrentText("pick")
    _click(qtbot, picker, 50, 50)  # select cell 3
    picker.mode_combo.setCurrentText("move")
    _click(qtbot, picker, 52, 40)
    moved = picker.folder.stat[3]
    assert abs(np.mean(moved["ypix"]) - 52) <= 1 and abs(np.mean(moved["xpix"]) - 40) <= 1
    picker.mode_combo.setCurrentText("draw")
    _click(qtbot, picker, 30, 30)
    picker.mode_combo.setCurrentText("delete")
    _click(qtbot, picker, 30, 30)
    picker.mode_combo.setCurrentText("move")
    picker.selected = picker.folder.stat[3]
    _click(qtbot, picker, 50, 50)  # back onto the cell
    picker.save_rois_button.click()
    rois = load_suite2p(picker.folder.plane)  # the rig's own loader reads the hand-drawn ROIs
    assert rois.n_rois == 4 and rois.cells_only().n_rois == 4
    expected = disk_roi(50, 50, 5.0, *SHAPE)
    assert sorted(zip(rois.stat[3]["ypix"], rois.stat[3]["xpix"], strict=True)) == \
        sorted(zip(expected["ypix"], expected["xpix"], strict=True))
    assert picker.stats is not None and not picker.stale and picker.table.rowCount() == 4
    assert picker.stats.score[3] == 0  # the dim cell: below the noise floor


def test_ensembles_by_suggest_and_click_are_checked_and_written_to_the_config(qtbot, picker):
    picker.mode_combo.setCurrentText("draw")
    for cy, cx in CELLS:
        _click(qtbot, picker, cy, cx)
    picker.save_rois_button.click()
    picker.n_up.setValue(1)
    picker.n_down.setValue(1)
    picker.suggest_button.click()
    up, down = picker.ensembles()
    assert len(up) == 1 and len(down) == 1 and 3 not in up + down
    picker.mode_combo.setCurrentText("pick")
    picker.role_combo.setCurrentText("down")
    _click(qtbot, picker, 50, 50)  # the dim cell into the down ensemble: refused with its numbers
    assert 3 in picker.ensembles()[1]
    assert not picker.save_choice()
    assert "down ROI 3: F0 = " in picker.message.text() and "below the noise floor" in picker.message.text()
    picker.role_combo.setCurrentText("none")
    _click(qtbot, picker, 50, 50)
    picker.save_config_button.click()
    text = picker.config.read_text()
    assert f"up = {up}" in text and f"down = {down}" in text and str(picker.folder.plane.resolve()) in text
    assert "saved in" in picker.message.text()


def test_a_reviewed_session_with_a_detection_opens_the_picker(qtbot, tmp_path):
    from gui.review import load_review  # noqa: PLC0415
    from gui.review_window import ReviewWindow  # noqa: PLC0415
    from tests.gui_fakes import write_finished_session  # noqa: PLC0415

    session = write_finished_session(tmp_path / "session")
    window = ReviewWindow(load_review(session))
    qtbot.addWidget(window)
    assert not window.pick_button.isVisibleTo(window)  # no detect/ yet
    _plane(session / "detect")
    window = ReviewWindow(load_review(session))
    qtbot.addWidget(window)
    assert window.pick_button.isVisibleTo(window)
    window.pick_button.click()
    assert isinstance(window.picker_window, RoiPicker)
    qtbot.addWidget(window.picker_window)
    assert window.picker_window.folder.plane == session / "detect" / "suite2p" / "plane0"


def test_mark_as_cell_or_not_is_saved_in_iscell_and_leaves_the_ensembles(qtbot, picker):
    picker.mode_combo.setCurrentText("draw")
    for cy, cx in CELLS:
        _click(qtbot, picker, cy, cx)
    picker.save_rois_button.click()
    picker.mode_combo.setCurrentText("pick")
    picker.role_combo.setCurrentText("up")
    _click(qtbot, picker, 12, 50)  # ROI 1 into the up ensemble, and selected
    assert picker.ensembles()[0] == [1]
    picker.cell_button.click()
    assert picker.stale and picker.ensembles() == ([], [])  # not a cell: the rig will not extract it
    picker.save_rois_button.click()
    iscell = np.load(picker.folder.plane / "iscell.npy")
    assert iscell[:, 0].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert load_suite2p(picker.folder.plane).cells_only().n_rois == 3 and picker.table.rowCount() == 3
    picker.cell_button.click()  # and back
    picker.save_rois_button.click()
    assert np.load(picker.folder.plane / "iscell.npy")[:, 0].tolist() == [1.0] * 4


def test_the_live_console_opens_the_picker_on_its_session_and_saves_into_its_config(qtbot, tmp_path):
    import json  # noqa: PLC0415

    from gui.main_window import MainWindow  # noqa: PLC0415
    from gui.session import ConsoleSession, GuiConfig  # noqa: PLC0415
    from tests.gui_fakes import FakeRig  # noqa: PLC0415

    config = tmp_path / "rig.toml"
    config.write_text('[decoder]\ndecoder = "two_population"\nup = [0, 1, 2, 3]\ndown = [4, 5, 6, 7]\n')
    with FakeRig(tmp_path / "session", n_rois=4) as rig:
        (rig.session_dir / "session.json").write_text(json.dumps({"config_file": str(config)}), encoding="utf-8")
        _plane(rig.session_dir / "detect")
        rig.start_stream()
        window = MainWindow(ConsoleSession(GuiConfig(refresh_hz=30), rig.endpoints["command"]))
        qtbot.addWidget(window)
        window.show()
        try:
            qtbot.waitUntil(lambda: bool(window.model.session_dir), timeout=10_000)
            assert window.pick_button.isVisibleTo(window)
            window.pick_button.click()
            picker = window.picker_window
            assert isinstance(picker, RoiPicker)
            qtbot.addWidget(picker)
            assert picker.folder.plane == rig.session_dir / "detect" / "suite2p" / "plane0"
            picker.mode_combo.setCurrentText("draw")
            for cy, cx in CELLS:
                _click(qtbot, picker, cy, cx)
            picker.save_rois_button.click()
            picker.n_up.setValue(1)
            picker.n_down.setValue(1)
            picker.suggest_button.click()
            up, down = picker.ensembles()
            assert picker.save_choice(), picker.message.text()
            text = config.read_text()  # the file the session was started from: what the next rig run reads
            assert f"up = {up}" in text and f"down = {down}" in text and str(picker.folder.plane.resolve()) in text
        finally:
            window.close()
            window.session.close()
