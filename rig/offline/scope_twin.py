"""The bench's scope twin: frames rendered before the run, pushed by a separate process over a real scope link.

The simulated scope renders each 512x512 frame on the rig's own cores (~1.6 ms), which a real scope never
costs the rig PC. For ``rig bench`` the frames are rendered once, before the session, into a ``.npy`` file;
a sender process (:func:`send_frames`, started with ``spawn``) loads them into memory and streams them at the
frame rate — looping the movie, frame numbers counting on — over one of the links a real scope uses:

* ``cloose`` — CLOOSE-compatible raw TCP (headerless uint16, column-major): the sender connects to the rig's
  ``cloose_tcp`` source, which listens, as CLOOSE's MATLAB sender does;
* ``zmq`` — our framed ZeroMQ stream (docs/FRAME_STREAM.md): the sender binds a PUB, the rig's
  ``zmq_stream`` source connects.

What the rig pays is what it pays with a real scope: receiving the bytes. The sender costs a few percent of
a core for the copy into the socket (``rig bench`` lists it as ``scope_twin``).

With ``acquisition.sim.n_planes = 2`` among the overrides it renders (the simulator's somata and dendrites) the
ZeroMQ twin sends each volume's planes one plane period apart, each header carrying ``plane``, ``planes`` and
``volume`` (docs/FRAME_STREAM.md); plane 1's ROIs go beside plane 0's (``suite2p/plane1``), where the rig looks
for them (docs/PLANES.md). The raw CLOOSE link has no plane field: it sends one plane only.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from acquisition.sim.config import SimConfig

TWIN_SCOPES = ("cloose", "zmq")


@dataclass
class TwinMovie:
    frames: Path  # (T * planes, H, W) uint16 .npy, the planes of each volume in turn
    rois: Path  # the suite2p plane0 folder of the simulated cells (plane1 beside it with two planes)
    planes: int = 1


def render_twin_movie(sim_overrides: list[str], n_frames: int, rate_hz: float, workdir: Path,
                      progress: bool = True) -> TwinMovie:
    """Render ``n_frames`` simulated frames (and their ROIs) once, before the run, from the defaults and
    ``sim_overrides`` (``rig bench`` resolves its whole config and calls :func:`render_twin_frames`)."""
    from rig.app.config import apply_overrides, config_from_dict  # noqa: PLC0415

    cfg = config_from_dict(apply_overrides({}, sim_overrides), "bench")
    return render_twin_frames(cfg.acquisition.sim, n_frames, rate_hz, workdir, progress)


def render_twin_frames(sim: SimConfig, n_frames: int, rate_hz: float, workdir: Path,
                       progress: bool = True) -> TwinMovie:
    """Render ``n_frames`` volumes of the simulator configured by ``sim`` (an ``[acquisition.sim]`` SimConfig)."""
    from acquisition.sim.export import export_movie  # noqa: PLC0415
    from acquisition.sources.movie import open_movie  # noqa: PLC0415

    out = workdir / "twin"
    print(f"[bench] rendering {n_frames} frames of {sim.height_px}x{sim.width_px} ({sim.n_planes} plane(s)) "
          "for the scope twin (before the run)...", flush=True)
    export_movie(sim, out, n_frames, rate_hz, progress=progress)
    planes = sim.n_planes
    movies = [out / "movie.tif"] + [out / f"plane{k}" / "movie.tif" for k in range(1, planes)]
    frames: np.ndarray | None = None
    for k, path in enumerate(movies):
        with open_movie(path) as movie:  # uint16 as the scope gave them (data.bin is int16)
            if frames is None:
                frames = np.empty((movie.n_frames * planes, *movie.shape), np.uint16)
            for i in range(movie.n_frames):
                movie.read_into(i, frames[i * planes + k])
        path.unlink()  # only the .npy is streamed
    for k in range(1, planes):  # beside plane0, where the rig looks for plane K's ROIs
        shutil.move(str(out / f"plane{k}" / "suite2p" / f"plane{k}"), str(out / "suite2p" / f"plane{k}"))
    assert frames is not None
    path = out / "frames.npy"
    np.save(path, frames)
    return TwinMovie(frames=path, rois=out / "suite2p" / "plane0", planes=planes)


def rig_overrides(scope: str, port: int, height: int, width: int) -> list[str]:
    """The rig config that reads the twin's link."""
    if scope == "cloose":
        return ["acquisition.source=cloose_tcp", "acquisition.cloose_tcp.mode=listen",
                f"acquisition.cloose_tcp.port={port}", f"acquisition.cloose_tcp.height_px={height}",
                f"acquisition.cloose_tcp.width_px={width}"]
    if scope == "zmq":
        return ["acquisition.source=zmq_stream", f'acquisition.zmq_stream.endpoint="tcp://127.0.0.1:{port}"',
                f"acquisition.zmq_stream.height_px={height}", f"acquisition.zmq_stream.width_px={width}"]
    raise ValueError(f"scope twin {scope!r}: expected one of {', '.join(TWIN_SCOPES)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_frames(scope: str, port: int, frames_path: str, rate_hz: float, stop: Any, result_path: str,
                planes: int = 1) -> None:
    """The sender process: frames from memory at ``rate_hz`` volumes per second (``planes`` frames each, one plane
    period apart) until ``stop`` is set; writes what it sent as JSON."""
    frames = np.load(frames_path)  # into memory before the first frame: nothing is rendered or read while sending
    period = 1.0 / (rate_hz * planes)
    sent = late_sends = 0
    if scope == "cloose" and planes > 1:
        raise ValueError("the CLOOSE raw TCP link has no plane field: a scope twin of several planes needs --scope zmq")
    if scope == "cloose":
        wire = [np.asfortranarray(f.astype("<u2", copy=False)).tobytes(order="F") for f in frames]
        sock = _connect(port, deadline=time.monotonic() + 120.0)
        send = sock.sendall
    else:
        import zmq  # noqa: PLC0415

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 64)
        sock.bind(f"tcp://127.0.0.1:{port}")
        shape = list(frames.shape[1:])
        wire = [np.ascontiguousarray(f.astype("<u2", copy=False)).tobytes() for f in frames]

        def send(payload: bytes) -> None:
            header = {"v": 1, "frame": sent, "t": sent * period, "shape": shape, "dtype": "uint16", "order": "C"}
            if planes > 1:
                header.update(plane=sent % planes, planes=planes, volume=sent // planes)
            sock.send_multipart([b"frame", json.dumps(header).encode(), payload], copy=False)
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            due = t0 + sent * period
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > period:
                late_sends += 1
            send(wire[sent % len(wire)])
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass  # the rig closed the link at the end of its session: the sender is done
    finally:
        sock.close()
    Path(result_path).write_text(json.dumps({"frames_sent": sent, "late_sends": late_sends,
                                             "seconds": round(time.monotonic() - t0, 3)}))


def _connect(port: int, deadline: float) -> socket.socket:
    """Dial the rig's listening CLOOSE source until it listens (it opens while the rig starts)."""
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class TwinSender:
    """Starts :func:`send_frames` in its own process (``spawn``) and collects what it sent."""

    def __init__(self, scope: str, port: int, movie: TwinMovie, rate_hz: float) -> None:
        if scope == "cloose" and movie.planes > 1:
            raise ValueError(f"the CLOOSE raw TCP link has no plane field: a scope twin of {movie.planes} planes "
                             "needs --scope zmq")
        self.result = movie.frames.with_name(f"sent-{scope}.json")
        self.result.unlink(missing_ok=True)  # an earlier run's counts (rig bench --repeat) must not pass for ours
        self.frames = movie.frames
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=send_frames, name="scope_twin", daemon=True,
                                args=(scope, port, str(movie.frames), rate_hz, self.stop, str(self.result),
                                      movie.planes))

    @property
    def started(self) -> bool:
        return self.proc.pid is not None

    def start(self) -> None:
        self.proc.start()

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def finish(self, remove_frames: bool = True) -> dict[str, Any]:
        """Stop the sender (the session has ended) and return its counts. ``remove_frames=False`` keeps the
        rendered frames for another run (``rig bench --repeat``), whose caller then removes them."""
        if not self.started:
            if remove_frames:
                self.frames.unlink(missing_ok=True)
            return {"frames_sent": 0, "exit_code": None}
        self.stop.set()
        self.proc.join(10.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5.0)
        if remove_frames:  # hundreds of MB of rendered frames: the session keeps what matters
            self.frames.unlink(missing_ok=True)
        if not self.result.exists():
            return {"frames_sent": None, "exit_code": self.proc.exitcode}
        return {**json.loads(self.result.read_text()), "exit_code": self.proc.exitcode}
