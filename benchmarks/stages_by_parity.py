#!/usr/bin/env python3
"""Per-stage medians of one session's frames, even frame numbers against odd: the read-out of an A/B run in which
a change is switched by the frame number's parity inside one session.

    python benchmarks/stages_by_parity.py [SESSION_DIR | BENCH_JSON]   (default: the newest bench_results run)

Why: on a shared VM the host's steal and load drift within minutes, so two runs a minute apart (even interleaved
in pairs) differ by as much as the changes we now measure (~0.05 ms). Two codes that alternate frame by frame
see the same minute of host, the same frames and the same pauses. The switch itself is a temporary edit (e.g.
``if frame.number % 2 == 0: <old code>``); nothing in the rig switches by parity. Both halves pay for each other's
cold caches, so the difference is a lower bound of what the change does on its own.

Prints, for even and odd frames: ready -> registered, extraction, ready -> sent, and frame ready -> decision.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from rig.core.store import read_records  # noqa: E402


def _session(arg: str | None) -> Path:
    if arg is None:
        runs = [p for p in Path("bench_results").glob("bench-*.json") if not p.name.endswith("-summary.json")]
        if not runs:
            raise SystemExit("no bench_results/bench-*.json here: give a session folder or a bench JSON")
        arg = str(max(runs, key=lambda p: p.stat().st_mtime))
    path = Path(arg)
    return Path(json.loads(path.read_text())["session"]) if path.suffix == ".json" else path


def main() -> None:
    session = _session(sys.argv[1] if len(sys.argv) > 1 else None)
    acq = read_records(session / "acquisition" / "frames.rec")
    dec = read_records(session / "decoder" / "decisions.rec")
    stages = {
        "ready -> registered": (acq["frame"], acq["t_registered"] - acq["t_ready"]),
        "extraction": (acq["frame"], acq["t_extracted"] - acq["t_registered"]),
        "ready -> sent": (acq["frame"], acq["t_sent"] - acq["t_ready"]),
        "ready -> decision": (dec["frame"], dec["t_decided"] - dec["t_ready"]),
    }
    print(f"{session}\n{'stage (ms, median)':22s} {'even':>8s} {'odd':>8s} {'odd-even':>9s}")
    for name, (frames, ns) in stages.items():
        even, odd = (float(np.median(ns[frames % 2 == parity])) / 1e6 for parity in (0, 1))
        print(f"{name:22s} {even:8.3f} {odd:8.3f} {odd - even:+9.3f}")
    print(f"frames: {int((acq['frame'] % 2 == 0).sum())} even, {int((acq['frame'] % 2 == 1).sum())} odd")


if __name__ == "__main__":
    main()
