"""ConsoleProcess: the console as a supervised process on the bus (spawned for real), and its window."""

from __future__ import annotations

import multiprocessing

import zmq

from gui.process import ConsoleProcess
from rig.app.config import CONFIG_LOADER
from rig.core.bus import Subscriber
from rig.core.process import ProcessSpec, process_main
from rig.core.schema import Control, Heartbeat, StateChange
from rig.core.store import read_events
from tests.conftest import wait_for
from tests.gui_fakes import FakeRig


def spec_for(rig: FakeRig, tmp_path, low_priority: bool = True) -> ProcessSpec:
    config = {"bus": {"heartbeat_interval_s": 0.1}, "gui": {"refresh_hz": 20, "low_priority": low_priority}}
    return ProcessSpec(name="gui", target="gui.process:ConsoleProcess", config=config, config_file="test.toml",
                       config_loader=CONFIG_LOADER,
                       endpoints=dict(rig.endpoints), session_dir=str(tmp_path / "session"), critical=False)


def test_console_process_follows_the_process_contract(tmp_path):
    with FakeRig(tmp_path / "session", n_rois=8) as rig:
        rig.start_stream()
        ctx = zmq.Context()
        sub = Subscriber(ctx, [rig.endpoints["gui"]], [b"sys."])
        proc = multiprocessing.get_context("spawn").Process(target=process_main, args=(spec_for(rig, tmp_path),))
        proc.start()
        seen = {"states": [], "stats": {}}

        def pump() -> None:
            for msg in sub.drain():
                if isinstance(msg, StateChange | Heartbeat) and (not seen["states"] or
                                                                  seen["states"][-1] != msg.state):
                    seen["states"].append(msg.state)
                if isinstance(msg, Heartbeat) and msg.stats:
                    seen["stats"] = dict(msg.stats)

        def reached(state: str) -> bool:
            pump()
            return bool(seen["states"]) and seen["states"][-1] == state

        try:
            wait_for(lambda: reached("ready"), 60, "console ready")

            def started() -> bool:
                rig.emit("supervisor", Control(command="start"))
                return reached("running")

            wait_for(started, 30, "console running", poll_s=0.05)
            # Running, it drains the bus it found through the snapshot and reports that in its heartbeat.
            wait_for(lambda: pump() or seen["stats"].get("messages", 0) > 30, 30, "console receiving the bus")
            assert seen["stats"]["missed"] == 0

            def stopped() -> bool:
                rig.emit("supervisor", Control(command="stop"))
                return reached("stopped")

            wait_for(stopped, 30, "console stopped", poll_s=0.05)
            proc.join(20)
            assert proc.exitcode == 0
            states = [s for s in seen["states"] if s != "configuring"]  # may precede our SUB's connection
            assert states == ["ready", "running", "stopping", "stopped"]
            priority = read_events(tmp_path / "session" / "gui" / "events.jsonl", {"priority"})
            assert priority and priority[0]["set"].startswith(("nice", "below-normal"))  # the rig gets the CPU first
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            sub.close()
            ctx.term()


def test_closing_the_window_stops_only_the_console(qtbot, tmp_path):
    with FakeRig(tmp_path / "session") as rig:
        console = ConsoleProcess(spec_for(rig, tmp_path, low_priority=False))  # in the test process itself
        try:
            console.configure()

            def connected() -> bool:
                console.step()  # one slice of the Qt loop, as RigProcess.run would call it
                return console.session.model.snapshots > 0

            qtbot.waitUntil(connected, timeout=10_000)
            console.on_safe_state("decoder failed")
            console.window.refresh()
            assert "SAFE STATE" in console.window.banner.text()
            console.window.close()
            assert console.stopping and console._stop_reason == "console window closed"
            assert rig.command_names() == []  # closing the console sends nothing to the rig
        finally:
            console.on_stop()
            console._close()
