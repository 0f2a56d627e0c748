"""``rig check`` and the start of ``rig run`` share rig.app.checks: configs that load but cannot run a session.

Each check is tested as a function on a config (no process is started); the two commands are then run in
this process to see that a finding is one line on stderr with the right exit code, that ``rig run`` refuses
before it makes a session folder, and that ``rig check --probe`` reports what a scope link delivers.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from acquisition.rois import RoiSet
from rig.app.checks import (
    MEMORY_LIMIT_BYTES,
    check_config,
    duration_findings,
    heartbeat_findings,
    mouse_id_findings,
    serial_port_findings,
)
from rig.app.cli import main
from rig.app.config import apply_overrides, config_from_dict, load_config
from rig.app.session_files import session_dir_name
from rig.core.bus import free_tcp_port
from rig.core.settings import SessionSection
from tests.conftest import REPO

SIM = REPO / "hardware_configs" / "sim.toml"
PATTERNS = [REPO / "hardware_configs" / name for name in ("scanbox_cloose.toml", "scanimage_stream.toml",
                                                          "replay.toml")]


def sim(*overrides: str):  # noqa: ANN202 - RigConfig
    return load_config(SIM, list(overrides))


def findings(cfg, **kwargs) -> dict[str, str]:  # noqa: ANN001
    """key -> message of every finding (errors and warnings) of ``check_config``."""
    return {f.key: f.message for f in check_config(cfg, SIM.parent, port_present=lambda port: True,
                                                    **kwargs).findings}


def suite2p_folder(folder: Path, n: int = 10, cells: int = 6, size: tuple[int, int] = (48, 48)) -> Path:
    """A small suite2p plane folder: ``n`` ROIs of which the first ``cells`` are cells, frames of ``size``."""
    stat = []
    for i in range(n):
        cy, cx = 6 + (i // 5) * 12, 6 + (i % 5) * 8
        yy, xx = np.mgrid[cy - 2:cy + 3, cx - 2:cx + 3]
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": np.full(25, 1 / 25), "med": [cy, cx], "npix": 25})
    iscell = np.zeros((n, 2))
    iscell[:cells] = 1
    return RoiSet(stat=stat, iscell=iscell, Ly=size[0], Lx=size[1], ref_img=np.ones(size)).save_suite2p(folder)


def test_the_simulated_rig_passes_every_check():
    assert findings(sim()) == {}


def test_ensemble_indices_beyond_the_roi_count_are_refused_with_the_count():
    found = findings(sim("decoder.up=[0, 999]"))
    assert "outside 0..149" in found["decoder.up"] and "150 ROIs" in found["decoder.up"], found


def test_ensemble_indices_count_only_the_cells_when_only_cells(tmp_path):
    folder = suite2p_folder(tmp_path / "plane0", n=10, cells=6)
    base = ["acquisition.source=replay", f'acquisition.rois.suite2p_dir="{folder.as_posix()}"', "decoder.up=[7]",
            "decoder.down=[1]"]
    found = findings(sim(*base))
    assert "outside 0..5" in found["decoder.up"] and "6 of 10" in found["decoder.up"], found
    assert "decoder.up" not in findings(sim(*base, "acquisition.rois.only_cells=false"))


def test_the_frame_size_must_be_the_suite2p_folders(tmp_path):
    folder = suite2p_folder(tmp_path / "plane0", size=(48, 48))
    cfg = sim("acquisition.source=cloose_tcp", "acquisition.cloose_tcp.height_px=48",
              "acquisition.cloose_tcp.width_px=64", f'acquisition.rois.suite2p_dir="{folder.as_posix()}"',
              "decoder.up=[0]", "decoder.down=[1]")
    message = findings(cfg)["acquisition.cloose_tcp.width_px"]
    assert "48x64" in message and "48x48" in message and "WRONG_SHAPE" in message
    ok = sim("acquisition.source=cloose_tcp", "acquisition.cloose_tcp.height_px=48",
             "acquisition.cloose_tcp.width_px=48", f'acquisition.rois.suite2p_dir="{folder.as_posix()}"',
             "decoder.up=[0]", "decoder.down=[1]", "session.mouse_id=M1")
    assert findings(ok) == {}


def test_a_window_that_cannot_fit_in_memory_is_refused():
    message = findings(sim("decoder.f0_window_s=1e12"))["decoder.f0_window_s"]
    assert "MemoryError" in message and "150 ROIs" in message
    seconds = MEMORY_LIMIT_BYTES / (30 * 150 * 8)
    assert "decoder.f0_window_s" not in findings(sim(f"decoder.f0_window_s={seconds * 0.9}"))


def test_heartbeats_must_leave_room_for_a_stall():
    [finding] = heartbeat_findings(sim("bus.heartbeat_interval_s=0.01", "bus.heartbeat_liveness=2"))
    assert finding.key == "bus.heartbeat_liveness" and "20 ms" in finding.message
    assert heartbeat_findings(sim("bus.heartbeat_interval_s=0.05", "bus.heartbeat_liveness=2")) == []


def test_a_baseline_shorter_than_three_trials_is_refused():
    message = findings(sim("task.baseline_s=11", "task.trial_s=4"))["task.baseline_s"]
    assert "3 trial lengths" in message and "12" in message
    assert "task.baseline_s" not in findings(sim("task.baseline_s=12", "task.trial_s=4"))


def test_a_live_valve_needs_its_port_and_its_calibration():
    cfg = sim("reward.port=/dev/ttyNOPE9", "reward.calibration_file=''")
    [port] = serial_port_findings(cfg, present=lambda port: False)
    assert port.key == "reward.port" and port.message.startswith("/dev/ttyNOPE9: no such serial port")
    assert serial_port_findings(cfg, present=lambda port: port == "/dev/ttyNOPE9") == []
    assert serial_port_findings(sim("reward.port=socket://127.0.0.1:9"), present=lambda port: False) == []
    assert "no valve calibration" in findings(cfg)["reward.calibration_file"]


def test_a_live_session_needs_a_mouse_id_and_never_makes_a_double_underscore():
    assert SessionSection().mouse_id == ""
    live = sim("acquisition.source=zmq_stream", "session.mouse_id=''")
    [refused] = mouse_id_findings(live, error=True)
    assert refused.error and "--set session.mouse_id=" in refused.message
    assert not mouse_id_findings(live, error=False)[0].error  # rig check: a warning
    assert mouse_id_findings(sim("session.mouse_id=''"), error=True) == []  # the simulation needs none
    assert session_dir_name("20250101-120000", "", "rig") == "20250101-120000_rig"
    assert session_dir_name("20250101-120000", " M 12/b ", "rig") == "20250101-120000_M-12-b_rig"
    assert "__" not in session_dir_name("20250101-120000", "__", "rig")


def test_a_duration_too_short_for_a_trial_is_warned():
    [warning] = duration_findings(sim(), 30)
    assert not warning.error and "no trial will run" in warning.message and "--duration 41" in warning.message
    assert "at most one trial" in duration_findings(sim(), 38)[0].message
    assert duration_findings(sim(), 60) == []  # the README's quick start has trials


def test_the_pattern_configs_mark_every_size_port_and_path_to_edit():
    keys = ("height_px", "width_px", "port", "base_port", "path", "suite2p_dir", "calibration_file",
            "sessions_dir", "endpoint", "ref_path", "mouse_id")
    for path in PATTERNS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            key = line.split("=")[0].strip()
            if "=" in line and not line.lstrip().startswith("#") and key in keys:
                assert "# EDIT" in line, f"{path.name}:{number}: {line}"


def test_rig_check_prints_one_line_per_finding(capsys):
    code = main(["check", str(SIM), "--set", "decoder.up=[999]", "--set", "bus.heartbeat_liveness=2",
                 "--set", "bus.heartbeat_interval_s=0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 2 and all(line.startswith(f"{SIM}: [") for line in err), err
    assert main(["check", str(SIM)]) == 0
    assert "OK (rig 'sim', source 'sim', 150 ROIs for 512x512 frames" in capsys.readouterr().out


def test_rig_run_refuses_in_one_line_before_anything_starts(tmp_path, capsys):
    """The missing valve calibration among them: refused before a process starts or a folder is made."""
    sessions = tmp_path / "sessions"
    code = main(["run", str(SIM), "--headless", "--sessions-dir", str(sessions),
                 "--set", "reward.port=socket://127.0.0.1:9", "--set", "reward.calibration_file=''",
                 "--set", "task.baseline_s=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 2 and all(line.startswith(f"rig run: refused: {SIM}: [") for line in err), err
    assert any("[reward.calibration_file]: no valve calibration" in line for line in err)
    assert any("[task.baseline_s]" in line for line in err)
    assert not sessions.exists()


def _scope(port: int, frames: int, size: tuple[int, int], done: threading.Event) -> None:
    """A CLOOSE-style scope: connects and writes ``frames`` raw uint16 frames."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for i in range(frames):
            conn.sendall(np.full(size, i, np.uint16).tobytes(order="F"))
        done.wait(5)


def test_the_probe_reports_frames_and_their_size_or_that_none_came(tmp_path):
    from rig.app.probe import probe_findings, probe_line, probe_source

    folder = suite2p_folder(tmp_path / "plane0", n=4, cells=4, size=(32, 48))
    port = free_tcp_port()
    cfg = sim("acquisition.source=cloose_tcp", f"acquisition.cloose_tcp.port={port}",
              "acquisition.cloose_tcp.height_px=32", "acquisition.cloose_tcp.width_px=48",
              f'acquisition.rois.suite2p_dir="{folder.as_posix()}"', "decoder.up=[0]", "decoder.down=[1]")
    done = threading.Event()
    scope = threading.Thread(target=lambda: _scope_when_listening(port, done), daemon=True)
    scope.start()
    try:
        result = probe_source(cfg, wait_s=5, measure_s=0.3)
    finally:
        done.set()
        scope.join(5)
    assert result.frames == 5 and result.shape == (32, 48)
    assert "5 frame(s)" in probe_line(cfg, result) and "32x48 pixels" in probe_line(cfg, result)
    checked = check_config(cfg, SIM.parent, port_present=lambda port: True)
    assert [f for f in probe_findings(cfg, checked, result, 5) if f.error] == []

    nobody = sim("acquisition.source=zmq_stream", f'acquisition.zmq_stream.endpoint="tcp://127.0.0.1:{port}"')
    silent = probe_source(nobody, wait_s=0.3)
    [finding] = probe_findings(nobody, check_config(nobody, SIM.parent), silent, 0.3)
    assert silent.frames == 0 and finding.error and f"tcp://127.0.0.1:{port}" in finding.message


def _scope_when_listening(port: int, done: threading.Event) -> None:
    """Connect once the probe listens (it opens the port a moment after the thread starts)."""
    from tests.conftest import wait_for

    def connected() -> bool:
        try:
            _scope(port, 5, (32, 48), done)
        except ConnectionRefusedError:
            return False
        return True

    wait_for(connected, 5, "the probe to listen")


@pytest.mark.parametrize("path", PATTERNS, ids=[p.stem for p in PATTERNS])
def test_the_pattern_configs_fail_only_on_what_the_user_must_provide(path):
    """Out of the box a pattern names files and devices of the user's rig; nothing else is wrong with it."""
    cfg = load_config(path)
    keys = {f.key for f in check_config(cfg, path.parent, port_present=lambda port: False).findings}
    assert keys <= {"acquisition.rois.suite2p_dir", "acquisition.replay.path", "reward.calibration_file",
                    "reward.port", "session.mouse_id"}, keys


def test_config_from_dict_defaults_pass_the_run_checks():
    cfg = config_from_dict(apply_overrides({}, ["task.baseline_s=300", "task.trial_s=30"]))
    assert [f for f in check_config(cfg, Path.cwd(), run=True).findings if f.error] == []


BROKEN_CHILD = """
import sys
from rig.app.config import CONFIG_LOADER
from rig.core.process import ProcessSpec, process_main
ports = sys.argv[2].split(",")
process_main(ProcessSpec(name="child", target="tests.procs:BrokenConfigureProcess", config={}, config_file="t.toml",
                         config_loader=CONFIG_LOADER, session_dir=sys.argv[1], critical=True, watch_parent=False,
                         endpoints={"supervisor": f"tcp://127.0.0.1:{ports[0]}", "child": f"tcp://127.0.0.1:{ports[1]}"}))
"""


def test_a_device_refused_while_starting_is_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    ports = f"{free_tcp_port()},{free_tcp_port()}"
    proc = subprocess.run([sys.executable, "-c", BROKEN_CHILD, str(tmp_path), ports], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("[child] FAILED while starting: FileNotFoundError: no such scope: /dev/nothing "
                                   "(traceback in child/events.jsonl)")


def test_the_scope_sources_frame_size_is_checked_against_the_rois_and_their_path_resolves(tmp_path):
    """The memory-mapped Scanbox, ScanImage and Bruker sources: frame size known from the config, and the mmap
    file's path relative to the config file."""
    from rig.app.checks import source_facts
    from rig.app.config import config_from_dict, load_config

    for source in ("scanbox_mmap", "scanimage_tcp", "prairieview"):
        cfg = config_from_dict({"acquisition": {"source": source, source: {"height_px": 256, "width_px": 300}}})
        assert source_facts(cfg)[0] == (256, 300)
    toml = tmp_path / "rig.toml"
    toml.write_text('[acquisition]\nsource = "scanbox_mmap"\n[acquisition.scanbox_mmap]\npath = "mm/scanbox.mmap"\n',
                    encoding="utf-8")
    assert load_config(toml).acquisition.scanbox_mmap.path == str((tmp_path / "mm" / "scanbox.mmap").resolve())
