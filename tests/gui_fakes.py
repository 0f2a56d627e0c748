"""A fake rig for console tests: a real ROUTER command socket and real PUB sockets on localhost.

:class:`FakeRig` plays the supervisor (answers ``snapshot``, records every command, relays nothing)
and the processes (a publisher thread streams FluorFrame / Decision / Preview / AcqStatus /
heartbeats at ``rate_hz``, and sends whatever a test queues with :meth:`FakeRig.emit`). Its decoder
mode follows the pause/resume commands it receives, like the real decoder's, so a test can watch a
command's effect come back on the bus. Like the real reward process it publishes ``LinkState`` only when
the link changes (:meth:`FakeRig.set_link`), and like the supervisor its snapshot carries the last one;
:meth:`FakeRig.end_session` plays the supervisor stopping every process at the end of a session.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

from rig.core.bus import Publisher, free_tcp_port
from rig.core.clock import now_ns
from rig.core.codes import COMMAND_RESULT_MODE, Mode, command_allowed
from rig.core.operator import (
    CommandReply,
    CommandRequest,
    LinkStatus,
    ProcessStatus,
    Snapshot,
    decode_request,
    encode,
)
from rig.core.schema import AcqStatus, Decision, FluorFrame, Heartbeat, LinkState, Message, Preview, StateChange

FRAME_SHAPE = (128, 128)
PREVIEW_DECIMATION = 2
MODE_BCI = int(Mode.BCI)
MODE_PAUSED = int(Mode.PAUSED)


def write_suite2p_rois(folder: Path, n_rois: int, shape: tuple[int, int] = FRAME_SHAPE, seed: int = 0,
                       iscell: np.ndarray | None = None) -> np.ndarray:
    """Disc-shaped ROIs on a grid in suite2p layout; returns their centres (n, 2) as (y, x)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Ly, Lx = shape
    side = int(np.ceil(np.sqrt(n_rois)))
    step_y, step_x = Ly / side, Lx / side
    radius = max(1.5, min(step_y, step_x) * 0.35)
    stat, centres = [], []
    yy, xx = np.mgrid[-int(radius) - 1:int(radius) + 2, -int(radius) - 1:int(radius) + 2]
    disc = yy**2 + xx**2 <= radius**2
    for i in range(n_rois):
        cy = int((i // side + 0.5) * step_y)
        cx = int((i % side + 0.5) * step_x)
        ypix = (yy[disc] + cy).astype(np.int32)
        xpix = (xx[disc] + cx).astype(np.int32)
        ok = (ypix >= 0) & (ypix < Ly) & (xpix >= 0) & (xpix < Lx)
        stat.append({"ypix": ypix[ok], "xpix": xpix[ok], "lam": np.ones(int(ok.sum()), np.float32),
                     "med": [cy, cx], "npix": int(ok.sum())})
        centres.append((cy, cx))
    np.save(folder / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    if iscell is not None:
        np.save(folder / "iscell.npy", iscell)
    np.save(folder / "ops.npy", np.array({"Ly": Ly, "Lx": Lx}, dtype=object), allow_pickle=True)
    reference = rng.gamma(2.0, 50.0, size=shape).astype(np.float32)
    np.save(folder / "reference.npy", reference)
    return np.array(centres, dtype=np.float64)


def write_finished_session(folder: Path, n_rois: int = 9, n_frames: int = 600, rate_hz: float = 30.0,
                           excluded_rois: int = 2) -> Path:
    """A small finished session in the rig's layout (docs/SESSION_FORMAT.md), with the real record dtypes.

    ROI i's F is ``100 + 10 i`` plus a ripple and its dF/F ``i / 100`` plus a ripple, so a test can tell which
    ROI a plot shows. Trials: start every 60 frames from frame 120, hit on odd trials, miss on even ones;
    a baseline from frame 0 to 119; decoder rewards on hits, one manual reward and one test pulse.
    """
    from acquisition.process import frame_record_dtype  # noqa: PLC0415 - the real layouts, only where needed
    from decoder.core import decision_record_dtype  # noqa: PLC0415
    from rig.core.store import EventLog, RecordWriter  # noqa: PLC0415

    iscell = np.array([[1.0, 1.0]] * n_rois + [[0.0, 0.0]] * excluded_rois)
    rois = folder / "acquisition" / "rois"
    write_suite2p_rois(rois, n_rois + excluded_rois, iscell=iscell)
    mean_img = np.linspace(0, 200, FRAME_SHAPE[0] * FRAME_SHAPE[1], dtype=np.float32).reshape(FRAME_SHAPE)
    np.save(rois / "ops.npy", np.array({"Ly": FRAME_SHAPE[0], "Lx": FRAME_SHAPE[1], "meanImg": mean_img},
                                       dtype=object), allow_pickle=True)
    t0 = 5_000_000_000
    period = int(1e9 / rate_hz)
    frames = RecordWriter(folder / "acquisition" / "frames.rec", frame_record_dtype(n_rois))
    decisions = RecordWriter(folder / "decoder" / "decisions.rec", decision_record_dtype(n_rois))
    ripple = np.sin(np.arange(n_frames) / 7.0).astype(np.float32)
    for k in range(n_frames):
        frame = k + 1
        t = t0 + k * period
        row = frames.next_row()
        row["frame"], row["t_ready"], row["t_sent"] = frame, t, t + 2_000_000
        row["F"] = 100.0 + 10.0 * np.arange(n_rois) + ripple[k]
        row["Fneu"] = 20.0 + ripple[k]
        frames.commit()
        row = decisions.next_row()
        row["frame"], row["t_ready"], row["t_decided"] = frame, t, t + 2_500_000
        row["mode"] = 1 if frame < 120 else 3
        row["trial_state"] = 0 if frame < 120 else (2 if (frame - 120) % 60 < 40 else 1)
        row["dff"] = np.arange(n_rois) / 100.0 + 0.01 * ripple[k]
        decisions.commit()
    frames.close()
    decisions.close()
    dec = EventLog(folder / "decoder" / "events.jsonl")
    dec.write("trial", event="baseline_start", trial=0, frame=1, hits=0, trials=0, frames=119)
    dec.write("trial", event="baseline_done", trial=0, frame=119, hits=0, trials=0, frames=119, gap_frames=0)
    dec.write("trial", event="calibrated", trial=0, frame=119, hits=0, trials=0)
    dec.write("trial", event="bci_start", trial=0, frame=120, hits=0, trials=0)
    hits = trials = 0
    rew = EventLog(folder / "reward" / "events.jsonl")
    for start in range(120, n_frames - 40, 60):
        trials += 1
        dec.write("trial", event="trial_start", trial=trials, frame=start, hits=hits, trials=trials)
        outcome = "hit" if trials % 2 else "miss"
        hits += outcome == "hit"
        dec.write("trial", event=outcome, trial=trials, frame=start + 20, hits=hits, trials=trials)
        if outcome == "hit":
            t_done = t0 + (start + 21) * period
            rew.write("reward_outcome", request_id=f"dec-{trials}", status="delivered", reason="", volume_ul=2.5,
                      open_ms=20.0, source="decoder", frame=start + 20, t_done=t_done, t_ns=t_done)
    rew.write("reward_outcome", request_id="man-1", status="delivered", reason="", volume_ul=4.0, open_ms=30.0,
              source="manual", t_done=t0 + 300 * period, t_ns=t0 + 300 * period)
    rew.write("reward_outcome", request_id="test-1", status="delivered", reason="", volume_ul=2.6, open_ms=20.0,
              source="test_pulse", t_done=t0 + 310 * period, t_ns=t0 + 310 * period)
    dec.write("trial", event="stopped", trial=trials, frame=n_frames, hits=hits, trials=trials)
    dec.close()
    rew.close()
    (folder / "session.json").write_text(json.dumps({
        "format": "bci-rig session v1", "status": "ok", "metadata": {"mouse_id": "BCI-042", "experimenter": "ada"},
        "endpoints": {"command": "tcp://127.0.0.1:1"}}), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps({
        "trials": trials, "hits": hits, "rewards_delivered": hits + 1, "volume_ul": 2.5 * hits + 4.0,
        "frames": n_frames, "frames_dropped": 0, "stop_reason": "operator"}), encoding="utf-8")
    (folder / "config.resolved.json").write_text(json.dumps({
        "decoder": {"up": [0, 1], "down": [2]}, "acquisition": {"frame_rate_hz": rate_hz}}), encoding="utf-8")
    return folder


class FakeRig:
    """See the module docstring. Use as a context manager; :meth:`start_stream` begins publishing."""

    PROCESSES = ("acquisition", "decoder", "reward")

    def __init__(self, session_dir: Path, *, n_rois: int = 16, rate_hz: float = 30.0,
                 snapshot_extra: dict[str, Any] | None = None, refuse: dict[str, str] | None = None,
                 sndhwm: int = 10_000, excluded_rois: int = 0, mode: Mode = Mode.BCI) -> None:
        self.session_dir = Path(session_dir)
        self.n_rois = n_rois
        self.rate_hz = rate_hz
        self.refuse = dict(refuse or {})
        self.ctx = zmq.Context()
        self.pubs: dict[str, Publisher] = {}
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoints = {"command": f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}",
                              "gui": f"tcp://127.0.0.1:{free_tcp_port()}"}  # bound by a ConsoleProcess, if any
            for name in ("supervisor", *self.PROCESSES):
                self.pubs[name] = self._bind_publisher(name, sndhwm)
                self.endpoints[name] = self.pubs[name].endpoint
        except BaseException:
            self._close_sockets()  # an unterminated context would hang whoever garbage-collects it
            raise
        # Like the acquisition process: the extracted ROIs first, then excluded ones (iscell 0).
        iscell = np.array([[1.0, 1.0]] * n_rois + [[0.0, 0.0]] * excluded_rois)
        self.centres = write_suite2p_rois(self.session_dir / "acquisition" / "rois", n_rois + excluded_rois,
                                          iscell=iscell)
        self.snapshot_extra = dict(snapshot_extra or {})
        self.commands: list[CommandRequest] = []
        self.snapshots_served = 0
        self.mode = int(mode)
        self.rig_mode = "running"  # the supervisor's mode: in snapshots and its heartbeats
        self.process_state = "running"  # every process's, in snapshots and heartbeats
        self.link: LinkStatus | None = LinkStatus(state="connected")  # as the supervisor's tally keeps it
        self.frames_published = 0
        self._lock = threading.Lock()
        self._outbox: queue.Queue[tuple[str, Message]] = queue.Queue()
        self._stop = threading.Event()
        self._streaming = threading.Event()
        self._stream_idle = threading.Event()  # set by the publisher thread once it has seen the stream stop
        self._burst: queue.Queue[int] = queue.Queue()
        self.burst_done = threading.Event()
        self._router_thread = threading.Thread(target=self._serve_router, daemon=True)
        self._router_thread.start()
        self._pub_thread = threading.Thread(target=self._publish_loop, daemon=True)
        self._pub_thread.start()

    # ------------------------------------------------------------------ supervisor side
    def snapshot(self) -> Snapshot:
        """The supervisor's snapshot of a rig in BCI; ``snapshot_extra`` replaces fields (typed values)."""
        with self._lock:
            rig_mode, state, link = self.rig_mode, self.process_state, self.link
        snap = Snapshot(
            session_dir=str(self.session_dir), endpoints=dict(self.endpoints), mode=rig_mode,
            processes={name: ProcessStatus(state=state) for name in self.PROCESSES},
            metadata={"mouse_id": "", "experimenter": "", "notes": ""},
            config={"decoder": {"up": [0, 1], "down": [2]}, "reward": {"volume_ul": 3.0},
                    "acquisition": {"rois": {"only_cells": False}, "frame_rate_hz": self.rate_hz},
                    "task": {"baseline_s": 10.0}},
            link=link,
        )
        return msgspec.structs.replace(snap, **self.snapshot_extra)

    def _serve_router(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            if not dict(poller.poll(20)):
                continue
            identity, _, body = self.router.recv_multipart()
            self.router.send_multipart([identity, b"", encode(self._answer(body))])

    def _answer(self, body: bytes) -> CommandReply:
        try:
            request = decode_request(body)
        except msgspec.DecodeError as exc:
            return CommandReply(ok=False, error=f"bad request: {exc}")
        if request.command == "snapshot":
            with self._lock:
                self.snapshots_served += 1
            return CommandReply(ok=True, snapshot=self.snapshot())
        if request.command in self.refuse:
            return CommandReply(ok=False, error=self.refuse[request.command])
        with self._lock:
            self.commands.append(request)
            after = COMMAND_RESULT_MODE.get(request.command)
            if after is not None and command_allowed(request.command, self.mode):
                self.mode = int(after)
        return CommandReply(ok=True)

    def set_mode(self, mode: Mode) -> None:
        """Put the fake decoder in ``mode`` (seen in the next Decision)."""
        with self._lock:
            self.mode = int(mode)

    def set_link(self, state: str, detail: str = "") -> None:
        """The reward board link changes: published once on the bus, and kept for snapshots."""
        with self._lock:
            self.link = LinkStatus(state=state, detail=detail)
        self.emit("reward", LinkState(state=state, detail=detail, t_ns=now_ns()))

    def end_session(self) -> None:
        """What the supervisor does at the end: its mode goes to stopping, every process stops, the stream ends."""
        with self._lock:
            self.rig_mode = "stopping"
            self.process_state = "stopped"
        self.stop_stream()
        for name in self.PROCESSES:
            self.emit(name, StateChange(process=name, state="stopping", reason="stop from supervisor", t_ns=now_ns()))
            self.emit(name, StateChange(process=name, state="stopped", t_ns=now_ns()))
        self.emit("supervisor", Heartbeat(process="supervisor", state="stopping", t_ns=now_ns()))

    def command_names(self) -> list[str]:
        with self._lock:
            return [c.command for c in self.commands]

    def last_command(self, name: str) -> CommandRequest | None:
        with self._lock:
            found = [c for c in self.commands if c.command == name]
        return found[-1] if found else None

    # ------------------------------------------------------------------ process side
    def start_stream(self) -> None:
        self._streaming.set()

    def stop_stream(self) -> None:
        """Stop the stream; returns once the publisher thread is idle, so ``frames_published`` is final."""
        self._stream_idle.clear()
        self._streaming.clear()
        if not self._stream_idle.wait(10):
            raise AssertionError("the fake rig's publisher thread did not stop streaming within 10 s")

    def burst(self, n_frames: int) -> None:
        """Publish ``n_frames`` FluorFrame + Decision pairs as fast as the sockets take them."""
        self.burst_done.clear()
        self._burst.put(n_frames)

    def emit(self, process: str, msg: Message) -> None:
        """Publish ``msg`` from ``process`` (on the publisher thread, which owns the sockets)."""
        self._outbox.put((process, msg))

    def _publish_loop(self) -> None:
        rng = np.random.default_rng(1)
        F = np.zeros(self.n_rois, np.float32)
        Fneu = np.zeros(self.n_rois, np.float32)
        preview_shape = (FRAME_SHAPE[0] // PREVIEW_DECIMATION, FRAME_SHAPE[1] // PREVIEW_DECIMATION)
        period = 1.0 / self.rate_hz
        next_t = time.perf_counter()
        frame = 0
        next_slow = 0.0
        while not self._stop.is_set():
            while True:
                try:
                    process, msg = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self.pubs[process].send(msg)
            try:
                n_burst = self._burst.get_nowait()
            except queue.Empty:
                n_burst = 0
            for _ in range(n_burst):
                frame += 1
                self._send_frame(frame, F, Fneu)
            if n_burst:
                self.burst_done.set()
            if not self._streaming.is_set():
                self._stream_idle.set()
                time.sleep(0.005)
                next_t = time.perf_counter()
                continue
            now = time.perf_counter()
            if now < next_t:
                time.sleep(min(next_t - now, 0.005))
                continue
            next_t += period
            frame += 1
            F[:] = rng.normal(100.0, 5.0, self.n_rois)
            Fneu[:] = rng.normal(20.0, 1.0, self.n_rois)
            t0 = self._send_frame(frame, F, Fneu)
            if now >= next_slow:
                next_slow = now + 0.25
                image = rng.gamma(2.0, 50.0, size=preview_shape).astype(np.float32)
                self.pubs["acquisition"].send(Preview(frame=frame, dy=0.5, dx=-0.25, corr=0.9, image=image, t_ns=t0))
                self.pubs["acquisition"].send(AcqStatus(frames=frame, frames_dropped=0, bad_frames=0, link="ok",
                                                        fps=self.rate_hz, t_ns=t0))
                with self._lock:
                    rig_mode, state = self.rig_mode, self.process_state
                for name in self.PROCESSES:
                    self.pubs[name].send(Heartbeat(process=name, state=state, t_ns=t0, pid=1000 + len(name),
                                                   stats={"frames": float(frame)}))
                self.pubs["supervisor"].send(Heartbeat(process="supervisor", state=rig_mode, t_ns=t0))

    def _send_frame(self, frame: int, F: np.ndarray, Fneu: np.ndarray) -> int:
        """One FluorFrame and its Decision, with stage stamps 2.0 / 0.1 / 0.2 / 0.1 ms apart."""
        t0 = now_ns()
        self.pubs["acquisition"].send(FluorFrame(
            frame=frame, t_ready=t0, t_registered=t0 + 2_000_000, t_extracted=t0 + 2_100_000, dy=0.5, dx=-0.25,
            corr=0.9, flags=0, F=F, Fneu=Fneu, t_sent=t0 + 2_200_000))
        with self._lock:
            mode = self.mode
        self.pubs["decoder"].send(Decision(
            frame=frame, t_ready=t0, t_registered=t0 + 2_000_000, t_extracted=t0 + 2_100_000,
            t_received=t0 + 2_300_000, t_decided=t0 + 2_400_000, mode=mode, trial=frame // 120,
            trial_state=(frame // 30) % 4, up=float(np.sin(frame / 10)), down=float(np.cos(frame / 13)),
            cursor=float(np.sin(frame / 10) - np.cos(frame / 13)), cursor_norm=0.5, tone_hz=5000.0,
            angle_bin=3, reward_requested=False))
        self.frames_published = frame
        return t0

    def _bind_publisher(self, name: str, sndhwm: int) -> Publisher:
        """A Publisher on a free port; retried because another test may take the port first."""
        for attempt in range(5):
            try:
                return Publisher(self.ctx, f"tcp://127.0.0.1:{free_tcp_port()}", sender=name, sndhwm=sndhwm)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ teardown
    def _close_sockets(self) -> None:
        for pub in self.pubs.values():
            pub.close()
        self.router.close()
        # destroy, not term: a Publisher whose bind failed left its socket open, and term() would wait on it.
        self.ctx.destroy(linger=0)

    def close(self) -> None:
        """Stop the threads and close the sockets (a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._router_thread.join(5)
        self._pub_thread.join(5)
        self._close_sockets()

    def __enter__(self) -> FakeRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
