"""The console with several imaging planes (issue 23, docs/PLANES.md): each plane with its ROIs by kind and the
dendrite -> soma links, the highlight of a partner across planes, and the link editor that draws, unlinks and
saves links into the files the loaders read back. The single-plane console is checked to stay as it was.

The live tests run against the fake rig of the other console tests (real sockets); the planes' messages are
``PlaneFluor`` and ``Preview(plane=1)`` it publishes as the acquisition would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.config import GuiConfig
from gui.link_editor import LinkEditor
from gui.link_set import LinkSet, LinkSetError, link_folders
from gui.main_window import MainWindow
from gui.plane_rois import KIND_FILE, PARENT_FILE, read_kinds
from gui.roi_folder import RoiFolderError, load_roi_folder
from gui.rois import RoiLoadError, load_roi_outlines
from gui.session import ConsoleSession
from rig.app.cli import main as run_cli
from rig.core.clock import now_ns
from rig.core.schema import PlaneFluor, Preview
from tests.gui_fakes import FakeRig, write_suite2p_rois

LEFT = QtCore.Qt.MouseButton.LeftButton
WAIT_MS = 10_000
N_SOMATA, N_PLANE1 = 16, 6
#: plane 1: ROIs 0-3 dendrites, 4-5 somata; ROI 0's soma is BCI ROI 2, ROI 1's is BCI ROI 5
KIND = np.array([1, 1, 1, 1, 0, 0], np.int8)
PARENT = np.array([2, 5, -1, -1, -1, -1], np.int32)


def write_plane1(session, kind=KIND, parent=PARENT):
    folder = session / "acquisition" / "planes" / "plane1" / "rois"
    centres = write_suite2p_rois(folder, N_PLANE1, seed=1)
    np.save(folder / KIND_FILE, kind)
    np.save(folder / PARENT_FILE, parent)
    return folder, centres


def planes_config(only_cells: bool = False) -> dict:
    return {"decoder": {"up": [0, 1], "down": [2]}, "reward": {"volume_ul": 3.0},
            "acquisition": {"rois": {"only_cells": only_cells}, "frame_rate_hz": 30.0, "n_planes": 2,
                            "bci_plane": 0}}


def open_console(qtbot, rig) -> MainWindow:
    window = MainWindow(ConsoleSession(GuiConfig(refresh_hz=30), rig.endpoints["command"]))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: len(window.model.decisions) > 5 and window.fov.rois is not None, timeout=WAIT_MS)
    return window


def publish_plane1(rig, preview_shape=(32, 32)) -> None:
    """What the acquisition publishes for plane 1 of a volume: its fluorescence and, now and then, a preview."""
    t = now_ns()
    rig.emit("acquisition", PlaneFluor(plane=1, frame=rig.frames_published, t_ready=t, dy=0.1, dx=0.2, corr=0.8,
                                       flags=0, F=np.full(N_PLANE1, 50.0, np.float32),
                                       Fneu=np.full(N_PLANE1, 10.0, np.float32)))
    rig.emit("acquisition", Preview(frame=rig.frames_published, dy=0.1, dx=0.2, corr=0.8, plane=1, t_ns=t,
                                    image=np.full(preview_shape, 7.0, np.float32)))


def hover(window, point: QtCore.QPoint) -> None:
    """A mouse move without a button over the field of view (QTest's mouseMove does not reach Qt offscreen)."""
    viewport = window.fov.graphics.viewport()
    event = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(point),
                              QtCore.QPointF(viewport.mapToGlobal(point)), QtCore.Qt.MouseButton.NoButton,
                              QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(viewport, event)


def test_both_planes_are_shown_with_their_rois_kinds_and_links(qtbot, tmp_path):
    with FakeRig(tmp_path / "session", n_rois=N_SOMATA, snapshot_extra={"config": planes_config()}) as rig:
        _, centres = write_plane1(rig.session_dir)
        rig.start_stream()
        window = open_console(qtbot, rig)
        try:
            fov = window.fov

            def plane1_drawn() -> bool:
                publish_plane1(rig)
                view = fov.plane_views.get(1)
                return view is not None and view.rois is not None and view.image_item.image is not None

            qtbot.waitUntil(plane1_drawn, timeout=WAIT_MS)
            view = fov.plane_views[1]
            assert list(fov.plane_views) == [1] and fov.bci_plane == 0
            assert fov.rois.n == N_SOMATA and view.rois.n == N_PLANE1
            assert list(view.rois.kind) == list(KIND)
            assert fov.planes_label.text() == "plane 1: 6 ROIs, 4 dendrites, 2 linked"
            # dendrites and somata are drawn in different colours; the linked ones opaque, labelled with the soma
            overlay = view.overlay_item.image
            dendrite_rgba = overlay[view.rois.outline_y[2][0], view.rois.outline_x[2][0]]
            soma_rgba = overlay[view.rois.outline_y[4][0], view.rois.outline_x[4][0]]
            linked_rgba = overlay[view.rois.outline_y[0][0], view.rois.outline_x[0][0]]
            assert tuple(dendrite_rgba[:3]) != tuple(soma_rgba[:3]) and linked_rgba[3] > dendrite_rgba[3]
            # the two planes' previews do not replace each other: plane 1 is 32x32, the BCI plane 64x64
            assert view.image_item.image.shape == (32, 32)
            qtbot.waitUntil(lambda: fov.image_item.image is not None, timeout=WAIT_MS)
            assert fov.image_item.image.shape == (64, 64)
            assert window.links_button.isVisible()
            # selecting a dendrite (a click on plane 1) highlights its soma on the BCI plane
            y, x = centres[0]
            qtbot.mouseClick(fov.graphics.viewport(), LEFT, pos=view_point(fov, view, y, x))
            assert fov.marked == {1: [0], 0: [2]}
            assert fov.planes_label.text().endswith("ROI 0 (dendrite) → soma 2")
            assert len(fov._bci_highlight.data) == len(fov.rois.outline_y[2])
            # hovering a soma highlights its dendrite on plane 1; leaving it goes back to the selection
            sy, sx = fov.rois.centers[5]
            hover_until(qtbot, window, fov.frame_to_widget(sy, sx), lambda: fov.marked == {1: [1], 0: [5]})
            hover_until(qtbot, window, fov.frame_to_widget(1.0, 1.0),  # the BCI plane, outside every ROI
                        lambda: fov.marked == {1: [0], 0: [2]})
        finally:
            window.close()
            window.session.close()


def hover_until(qtbot, window, point: QtCore.QPoint, condition) -> None:
    """Move the mouse to ``point`` until ``condition()``: pyqtgraph drops moves that come too fast after another."""
    def moved() -> bool:
        hover(window, point)
        return condition()

    qtbot.waitUntil(moved, timeout=WAIT_MS)


def view_point(fov, view, y: float, x: float) -> QtCore.QPoint:
    return fov.graphics.mapFromScene(view.view.mapViewToScene(QtCore.QPointF(x, y)))


def test_the_single_plane_console_has_no_plane_views(qtbot, tmp_path):
    with FakeRig(tmp_path / "session", n_rois=N_SOMATA) as rig:
        rig.start_stream()
        window = open_console(qtbot, rig)
        try:
            qtbot.waitUntil(lambda: window.fov.image_item.image is not None, timeout=WAIT_MS)
            for _ in range(5):
                window.refresh()
            assert window.fov.plane_views == {} and window.fov._bci_title is None
            assert not window.links_button.isVisible() and not window.planes.active
            assert len(window.fov.graphics.ci.items) == 1  # the one view box of before
            assert window.open_links() is False and "no plane folders" in window.statusBar().currentMessage()
        finally:
            window.close()
            window.session.close()


def finished_session(tmp_path, only_cells=False):
    session = tmp_path / "finished"
    iscell = np.array([[0.0, 0.0]] + [[1.0, 1.0]] * (N_SOMATA - 1)) if only_cells else None
    write_suite2p_rois(session / "acquisition" / "rois", N_SOMATA, iscell=iscell)
    folder, centres = write_plane1(session)
    if only_cells:
        np.save(folder / "iscell.npy", np.ones((N_PLANE1, 2), np.float32))
    (session / "config.resolved.json").write_text(json.dumps(planes_config(only_cells)), encoding="utf-8")
    return session, folder, centres


def test_drawing_unlinking_and_saving_links_writes_what_the_loaders_read(qtbot, tmp_path):
    session, folder, centres = finished_session(tmp_path)
    folders, bci, only_cells = link_folders([session])
    assert folders == {0: session / "acquisition" / "rois", 1: folder} and bci == 0 and not only_cells
    editor = LinkEditor(LinkSet(folders, bci, only_cells))
    qtbot.addWidget(editor)
    editor.show()
    qtbot.waitExposed(editor)
    assert editor.links.links(1) == [(0, 2), (1, 5)] and editor.table.count() == 2
    # click plane 1's ROI 4 (a soma so far), then BCI soma 7: linked, and it became a dendrite
    qtbot.mouseClick(editor.graphics.viewport(), LEFT, pos=editor.frame_to_widget(1, *centres[4]))
    assert editor.selected == (1, 4) and "click its soma" in editor.message.text()
    bci_rois = editor.links.bci.rois
    qtbot.mouseClick(editor.graphics.viewport(), LEFT, pos=editor.frame_to_widget(0, *bci_rois.centers[7]))
    assert editor.links.links(1) == [(0, 2), (1, 5), (4, 7)] and editor.table.count() == 3
    # selecting the soma highlights its new dendrite
    editor.click(0, 7)
    assert len(editor.plane_view.highlight.data) == len(editor.plane_view.rois.outline_y[4])
    # unlink ROI 0 (from the list of links), then save
    editor.table.setCurrentRow(0)
    assert editor.selected == (1, 0)
    editor.unlink_button.click()
    assert editor.links.links(1) == [(1, 5), (4, 7)]
    assert editor.save() and str(folder) in editor.message.text()
    kind, parent = read_kinds(folder, N_PLANE1, N_SOMATA)
    assert list(kind) == [1, 1, 1, 1, 1, 0] and list(parent) == [-1, 5, -1, -1, 7, -1]
    assert not (session / "acquisition" / "rois" / KIND_FILE).exists()  # the BCI plane stays all soma
    # every loader reads the saved links back: the console's outlines, the picker's folder, a new editor
    outlines = load_roi_outlines(folder, n_somata=N_SOMATA)
    assert list(outlines.parent) == [-1, 5, -1, -1, 7, -1]
    np.save(folder / "ops.npy", np.array({"Ly": 128, "Lx": 128, "meanImg": np.ones((128, 128)), "fs": 30.0},
                                         dtype=object), allow_pickle=True)
    assert list(load_roi_folder(folder).kind) == [1, 1, 1, 1, 1, 0]
    assert LinkSet(folders, 0, False).links(1) == [(1, 5), (4, 7)]
    editor.close()


def test_links_are_numbered_as_the_rig_numbers_rois_and_saved_as_stat_rows(tmp_path):
    # the BCI plane's stat row 0 is not a cell: with only_cells, the rig's soma 0 is stat row 1
    session, folder, _ = finished_session(tmp_path, only_cells=True)
    links = LinkSet(*link_folders([session]))
    assert links.bci.rois.n == N_SOMATA - 1
    assert links.links(1) == [(0, 1), (1, 4)]  # the files' rows 2 and 5
    links.link(1, 2, 0)
    links.save()
    assert list(read_kinds(folder, N_PLANE1)[1]) == [2, 5, 1, -1, -1, -1]


def test_bad_kind_files_are_refused_with_the_acquisitions_messages(tmp_path):
    session, folder, _ = finished_session(tmp_path)
    np.save(folder / PARENT_FILE, np.array([99, -1, -1, -1, -1, -1], np.int32))
    with pytest.raises(LinkSetError, match=r"ROI 0 is linked to soma 99, but the BCI plane has 16 ROIs \(0\.\.15\)"):
        LinkSet(*link_folders([session]))
    np.save(folder / KIND_FILE, np.array([1, 0], np.int8))
    with pytest.raises(RoiLoadError, match=r"roi_kind.npy: 2 entries \(shape \(2,\)\) but stat.npy has 6 ROIs"):
        load_roi_outlines(folder)
    np.save(folder / KIND_FILE, np.zeros(N_PLANE1, np.int8))
    np.save(folder / PARENT_FILE, np.array([3, -1, -1, -1, -1, -1], np.int32))
    np.save(folder / "ops.npy", np.array({"meanImg": np.ones((128, 128)), "fs": 30.0}, dtype=object),
            allow_pickle=True)
    with pytest.raises(RoiFolderError, match="ROI 0 has parent 3 but is not a dendrite"):
        load_roi_folder(folder)
    with pytest.raises(LinkSetError, match="only one plane"):
        LinkSet({0: session / "acquisition" / "rois"}, 0)


def test_rig_console_link_refuses_a_folder_without_planes(capsys, tmp_path):
    assert run_cli(["console", "--link", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rig console --link:") and "neither a session folder" in err[-1]


def test_suggest_links_dendrites_to_the_somata_under_them(qtbot, tmp_path):
    """Plane 1 holds two dendrites 1 px beside BCI somata 3 and 9, with the same activity (suite2p F.npy)."""
    bci = tmp_path / "suite2p" / "plane0"
    plane1 = tmp_path / "suite2p" / "plane1"
    write_suite2p_rois(bci, N_SOMATA)
    write_suite2p_rois(plane1, N_SOMATA)
    stat = np.load(bci / "stat.npy", allow_pickle=True)
    moved = np.empty(2, dtype=object)
    moved[:] = [dict(stat[3], xpix=stat[3]["xpix"] + 1), dict(stat[9], ypix=stat[9]["ypix"] + 1)]
    np.save(plane1 / "stat.npy", moved, allow_pickle=True)
    rng = np.random.default_rng(3)
    somata = rng.normal(100, 10, (N_SOMATA, 400)).astype(np.float32)
    np.save(bci / "F.npy", somata)
    np.save(plane1 / "F.npy", somata[[3, 9]] * 0.5 + rng.normal(0, 1, (2, 400)).astype(np.float32))
    for folder, n in ((bci, N_SOMATA), (plane1, 2)):
        np.save(folder / "Fneu.npy", np.full((n, 400), 20.0, np.float32))
    folders, bci_plane, only_cells = link_folders([tmp_path / "suite2p"])
    assert folders == {0: bci, 1: plane1}
    editor = LinkEditor(LinkSet(folders, bci_plane, only_cells=False))
    qtbot.addWidget(editor)
    editor.suggest_button.click()
    assert editor.links.links(1) == [(0, 3), (1, 9)], editor.message.text()
    assert "activity" in editor.message.text() and "no traces" not in editor.message.text()
    assert editor.save() and list(read_kinds(plane1, 2, N_SOMATA)[1]) == [3, 9]


def test_a_finished_sessions_review_shows_its_planes_and_opens_the_link_editor(qtbot, tmp_path):
    from gui.review import load_review  # noqa: PLC0415
    from gui.review_window import ReviewWindow  # noqa: PLC0415
    from tests.gui_fakes import write_finished_session  # noqa: PLC0415

    session = write_finished_session(tmp_path / "session", n_rois=N_SOMATA, excluded_rois=0)
    folder, centres = write_plane1(session)
    np.save(folder / "iscell.npy", np.ones((N_PLANE1, 2), np.float32))
    window = ReviewWindow(load_review(session))
    qtbot.addWidget(window)
    window.show()
    view = window.fov.plane_views[1]
    assert view.rois.n == N_PLANE1 and view.image_item.image is not None and window.links_button.isVisible()
    assert window.fov.partners(1, 1) == {0: [5]} and window.fov.partners(0, 2) == {1: [0]}
    window.links_button.click()
    editor = window.links_window
    editor.click(1, 3)
    editor.click(0, 5)  # soma 5 gets a second dendrite
    assert editor.save()
    assert window.fov.partners(0, 5) == {1: [1, 3]}  # the review redrew its planes from the saved files
    editor.close()
    window.close()


def test_rig_console_link_opens_the_editor_on_a_session_and_exits_0(qtbot, tmp_path):
    from tests.test_gui_cli import close_when, hang_guard  # noqa: PLC0415

    session, folder, _ = finished_session(tmp_path)
    seen = close_when(qtbot, LinkEditor, lambda editor: editor.table.count() == 2)
    guard = hang_guard(60)
    try:
        code = run_cli(["console", "--link", str(session)])
    finally:
        guard.stop()
        seen[0].stop()
    assert code == 0 and len(seen) == 2
    editor = seen[1]
    assert editor.links.planes[1].folder == folder and editor.links.links(1) == [(0, 2), (1, 5)]


def test_the_bus_reader_hands_over_the_newest_preview_of_every_plane(tmp_path):
    """Two planes' previews waiting at once: one pump gives one of each (before, only the newest one overall)."""
    import time  # noqa: PLC0415

    import zmq  # noqa: PLC0415

    from gui.bus_reader import BusReader  # noqa: PLC0415
    from rig.core.bus import Publisher, free_tcp_port  # noqa: PLC0415

    ctx = zmq.Context()
    pub = Publisher(ctx, f"tcp://127.0.0.1:{free_tcp_port()}", sender="acquisition")
    reader = BusReader(ctx, [pub.endpoint], GuiConfig())
    try:
        image = np.zeros((4, 4), np.float32)
        deadline = time.monotonic() + 10
        while True:
            for frame, plane in ((1, 1), (1, 0), (2, 1), (2, 0)):
                pub.send(Preview(frame=frame, dy=0.0, dx=0.0, corr=1.0, image=image, plane=plane))
            reader.preview.poll(200)  # the first arrived (once subscribed): the rest follow on the same connection
            got: list = []
            reader.pump(got.append)
            planes = [msg.plane for msg in got]
            assert len(planes) == len(set(planes)), planes  # never two of one plane
            if sorted(planes) == [0, 1]:
                break
            assert time.monotonic() < deadline, f"no pump gave both planes' previews (last: {planes})"
    finally:
        reader.close()
        pub.close()
        ctx.destroy(linger=0)


def test_the_model_keeps_the_bci_planes_preview_apart_whichever_plane_drives_the_bci():
    from gui.model import ConsoleModel  # noqa: PLC0415

    model = ConsoleModel(GuiConfig())
    model.config = {"acquisition": {"n_planes": 2, "bci_plane": 1}}
    image = np.zeros((4, 4), np.float32)
    model.ingest(Preview(frame=3, dy=0.0, dx=0.0, corr=1.0, image=image, plane=1))
    model.ingest(Preview(frame=3, dy=0.0, dx=0.0, corr=1.0, image=image + 1, plane=0))
    model.ingest(PlaneFluor(plane=0, frame=3, t_ready=1, dy=0.5, dx=0.0, corr=0.9, flags=0,
                            F=np.zeros(7, np.float32), Fneu=np.zeros(7, np.float32)))
    assert model.preview is not None and model.preview.image.max() == 0 and model.preview_count == 1
    live = model.planes.planes[0]
    assert model.planes.known() == [0] and live.preview_image.max() == 1 and live.n_rois == 7 and live.dy == 0.5


def test_the_roi_picker_keeps_a_planes_kinds_aligned_with_its_rois(qtbot, tmp_path):
    from gui.roi_picker import RoiPicker  # noqa: PLC0415

    folder, centres = write_plane1(tmp_path / "session")
    np.save(folder / "ops.npy", np.array({"Ly": 128, "Lx": 128, "meanImg": np.ones((128, 128)), "fs": 30.0},
                                         dtype=object), allow_pickle=True)
    picker = RoiPicker(load_roi_folder(folder), only_cells=False)
    qtbot.addWidget(picker)
    picker.mode_combo.setCurrentText("delete")
    picker.click(*centres[0])  # dendrite 0 (linked to soma 2) goes, with its kind and link
    picker.mode_combo.setCurrentText("draw")
    picker.click(120.0, 120.0)  # a new ROI: a soma without a link
    picker.save_rois()
    kind, parent = read_kinds(folder, N_PLANE1)
    assert list(kind) == [1, 1, 1, 0, 0, 0] and list(parent) == [5, -1, -1, -1, -1, -1]
