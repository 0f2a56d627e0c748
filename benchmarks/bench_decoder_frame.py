"""Issue 21: where the decoder process's CPU goes per frame, piece by piece, in thread CPU time.

    python benchmarks/bench_decoder_frame.py [--frames 3000] [--rois 500] [--pieces] [--old-rows] [--gap-ms G]

The real :class:`decoder.process.DecoderProcess` (configured, its publisher bound, without its bus loop, as
tests/test_session_offline.py runs it) decides ``--frames`` frames in BCI after a 65-s auto_protocol baseline,
500 ROIs at 30 Hz, F0 window 60 s, ensembles of 10 + 10 (synthetic calcium traces of bench_decoder.py). Each
frame is encoded as the acquisition sends it and decoded as the decoder receives it. Printed per frame
(µs, median / mean / p99): the bus decode of the FluorFrame and ``DecoderProcess._decide`` (engine step,
reward check, Decision publish, decisions.rec row, stamps, commit, late-decision bookkeeping, idle GC).
``--pieces`` also times each piece inside it (each wrapper adds ~0.3 µs). ``--old-rows`` fills the
decisions.rec row field by field as the decoder did before issue 21 (A/B). Thread CPU time
(``time.thread_time_ns``): the decoder's own cost, not what the other processes on a shared machine take.
``--gap-ms G`` sleeps G ms before each measured frame, as the decoder waits for the next frame in a session
(frames back to back keep its code and data in the caches; a session's 33-ms wait does not: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import decoder.core as core_module  # noqa: E402
from benchmarks.bench_decoder import synthetic  # noqa: E402
from decoder.process import DecoderProcess  # noqa: E402
from rig.app.config import CONFIG_LOADER, config_from_dict  # noqa: E402
from rig.core.bus import free_tcp_port  # noqa: E402
from rig.core.clock import now_ns  # noqa: E402
from rig.core.codes import Mode  # noqa: E402
from rig.core.process import ProcessSpec  # noqa: E402
from rig.core.schema import Codec, Control, FluorFrame  # noqa: E402

FPS = 30.0
BASELINE_S = 65.0


def _old_fill(row: Any, frame: int, flags: int, res: Any, fields: Any = None) -> None:
    """decoder/core.py's row fill before issue 21: one numpy field write each."""
    for name, value in (("frame", frame), ("mode", int(res.mode)), ("trial", res.trial),
                        ("trial_state", int(res.trial_state)), ("up", res.up), ("down", res.down),
                        ("cursor", res.cursor), ("cursor_norm", res.cursor_norm), ("tone_hz", res.tone_hz),
                        ("angle_bin", res.angle_bin), ("reward_requested", res.reward_request), ("flags", flags),
                        ("dff", res.dff)):
        row[name] = value


def _old_decide(self: DecoderProcess, msg: FluorFrame) -> None:
    """DecoderProcess._decide before issue 21 (stamps written field by field)."""
    self._t_received = now_ns()
    self._msg = msg
    row = self.records.next_row()
    self.core.decide(msg.frame, msg.F, msg.Fneu, msg.flags, row)
    row["t_ready"] = msg.t_ready
    row["t_registered"] = msg.t_registered
    row["t_extracted"] = msg.t_extracted
    row["t_received"] = self._t_received
    row["t_decided"] = self._t_decided
    t0 = now_ns()
    self.records.commit()
    flush_ms = (now_ns() - t0) / 1e6
    self.late.observe(msg.frame, (msg.t_ready, msg.t_registered, msg.t_extracted, msg.t_sent), self._t_received,
                      self._t_decided, "calibration thread" if self.calibrator.computing else "")
    self.late.flushed(flush_ms)
    if self._idle_gc is not None:
        self._idle_gc.collect_if_due()


def _decoder(folder: Path, rois: int) -> DecoderProcess:
    doc = {"rig": {"name": "bench"}, "session": {"mouse_id": "m1", "experimenter": "Bench, B"},
           "acquisition": {"source": "sim", "frame_rate_hz": FPS},
           "decoder": {"up": list(range(10)), "down": list(range(10, 20))},
           "task": {"baseline_s": BASELINE_S, "auto_protocol": True, "trial_s": 5.0, "iti_s": 1.0},
           "reward": {"volume_ul": 2.5}}
    cfg = config_from_dict(doc, "bench")
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("decoder", "supervisor", "acquisition")}
    spec = ProcessSpec(name="decoder", target="decoder.process:DecoderProcess", config=msgspec.to_builtins(cfg),
                       config_file="bench", config_loader=CONFIG_LOADER, endpoints=endpoints, session_dir=str(folder),
                       critical=True,
                       extra={"upstream": {"acquisition": {"n_rois": str(rois), "frame_rate_hz": repr(FPS)}}},
                       watch_parent=False)
    dec = DecoderProcess(spec)
    dec.configure()
    dec.on_start()
    return dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--rois", type=int, default=500)
    ap.add_argument("--pieces", action="store_true", help="also time each piece of the frame")
    ap.add_argument("--old-rows", action="store_true", help="the decisions.rec row field by field, as before")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="sleep this long before each measured frame")
    args = ap.parse_args()
    if args.old_rows:
        core_module._fill_row = _old_fill  # type: ignore[assignment]
        DecoderProcess._decide = _old_decide  # type: ignore[method-assign]
    dec = _decoder(Path(tempfile.mkdtemp()) / "session", args.rois)
    clock = time.thread_time_ns
    spent: dict[str, list[int]] = defaultdict(list)
    measuring = False

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            if not measuring:
                return fn(*a, **kw)
            t0 = clock()
            out = fn(*a, **kw)
            spent[name].append(clock() - t0)
            return out
        return wrapper

    if args.pieces:
        dec.core.engine.step = timed("engine.step", dec.core.engine.step)  # type: ignore[method-assign]
        dec.pub.send = timed("publish Decision (encode + send)", dec.pub.send)  # type: ignore[method-assign]
        dec.records.next_row = timed("records.next_row", dec.records.next_row)  # type: ignore[method-assign]
        dec.records.commit = timed("records.commit", dec.records.commit)  # type: ignore[method-assign]
        dec.late.observe = timed("late.observe", dec.late.observe)  # type: ignore[method-assign]
        dec.late.flushed = timed("late.flushed", dec.late.flushed)  # type: ignore[method-assign]
        core_module._fill_row = timed("decisions.rec row (decision fields)", core_module._fill_row)
    baseline = int(BASELINE_S * FPS)
    n_total = baseline + 60 + args.frames
    F, Fneu = synthetic(n_total, args.rois, FPS)
    codec = Codec()
    dec.on_control(Control(command="start_baseline", args={}, issued_by="bench"))
    for i in range(n_total):
        if args.gap_ms and i >= baseline + 60:
            time.sleep(args.gap_ms / 1e3)  # waiting for the next frame, as in a session
        t_ready = now_ns() - 2_000_000  # ready 2 ms ago: on time, as in a session
        wire = [bytes(memoryview(part)) for part in codec.encode(FluorFrame(
            frame=i, t_ready=t_ready, t_registered=t_ready + 1, t_extracted=t_ready + 2, dy=0.0, dx=0.0, corr=1.0,
            flags=0, F=F[i], Fneu=Fneu[i], t_sent=t_ready + 3))]
        if i == baseline and dec.core.calibration_pending is not None:
            dec.core.calibration_pending.wait(60.0)  # applied before this frame: every measured frame is BCI
        measuring = i >= baseline + 60
        t0 = clock()
        msg = codec.decode(wire)
        t1 = clock()
        dec._decide(msg)  # type: ignore[arg-type]
        t2 = clock()
        if measuring:
            spent["bus decode of the FluorFrame"].append(t1 - t0)
            spent["DecoderProcess._decide, all of it"].append(t2 - t1)
    mode = dec.core.engine.mode
    dec.on_stop()
    dec._close()
    if mode != Mode.BCI:
        raise SystemExit(f"the decoder was in {mode.name}, not BCI: the calibration failed; nothing measured")
    print(f"{args.frames} frames in BCI, {args.rois} ROIs, {'old' if args.old_rows else 'current'} rows, "
          f"{args.gap_ms:g} ms pause before each; thread CPU per frame (µs): median / mean / p99")
    for name, values in spent.items():
        values.sort()
        print(f"  {name:40s} {statistics.median(values) / 1e3:7.1f} {statistics.mean(values) / 1e3:7.1f} "
              f"{values[int(0.99 * (len(values) - 1))] / 1e3:7.1f}")


if __name__ == "__main__":
    main()
