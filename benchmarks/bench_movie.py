"""How much the compressed session movie saves, and what it costs the writer thread.

Run:  python benchmarks/bench_movie.py [--frames 120] [--paced]
Writes the frames through ``rig.core.movie_file.ChunkedMovieWriter`` (byte shuffle + zstd level 1, 0.25-s
chunks) and reads them back. Two kinds of frames: the rig's simulated scope (``hardware_configs/sim.toml``'s
``[acquisition.sim]``, 512x512 uint16) and the independent synthetic generator of the acquisition tests
(``tests/test_acq_synth.make_movie``, 256x256). Prints JSON: compression ratio, bytes per minute at 30 Hz,
compress and decode ms per frame (the writer thread's CPU, not the loop's). ``--paced`` instead times what
the loop pays: ``put`` of 64x256 frames handed over at 1 kHz for 3 s (p50/p99 µs) and the process's CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig.core.movie_file import ChunkedMovie, ChunkedMovieWriter, chunk_frames_for  # noqa: E402


def sim_frames(n: int) -> np.ndarray:
    from acquisition.sim.scope import SimScope
    from rig.app.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "hardware_configs" / "sim.toml")
    scope = SimScope(cfg.acquisition.sim, 30.0)
    frames = np.empty((n, *scope.shape), np.uint16)
    for i in range(n):
        scope.render(frames[i])
    return frames


def synth_frames(n: int) -> np.ndarray:
    from tests.test_acq_synth import make_movie

    return make_movie(T=n, Ly=256, Lx=256).frames


def measure(frames: np.ndarray, folder: Path, rate_hz: float = 30.0) -> dict[str, float]:
    path = folder / "movie.zchunks"
    path.unlink(missing_ok=True)
    chunk = chunk_frames_for(frames[0].nbytes, rate_hz, 0.25)
    t0 = time.perf_counter()
    # a ring twice the burst: the writer never counts as behind, so every chunk is compressed (behind, with
    # more than half its ring waiting, it would store chunks raw: ``raw_chunks`` says it did not)
    writer = ChunkedMovieWriter(path, frames.shape[1:], frames.dtype, 2 * len(frames) + 1, chunk, 0.25)
    for frame in frames:
        writer.put(frame)
    writer.close()
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    movie = ChunkedMovie(path, frames.dtype, *frames.shape[1:])
    back = np.asarray(movie)
    read_s = time.perf_counter() - t0
    if not np.array_equal(back, frames):
        raise SystemExit("the movie did not come back bit for bit")
    size = path.stat().st_size
    return {"frames": len(frames), "shape": list(frames.shape[1:]), "ratio": round(frames.nbytes / size, 3),
            "mb_per_min_at_30hz": round(size / len(frames) * 30 * 60 / 2**20, 1),
            "raw_mb_per_min_at_30hz": round(frames[0].nbytes * 30 * 60 / 2**20, 1),
            "write_ms_per_frame": round(1e3 * write_s / len(frames), 3),
            "read_ms_per_frame": round(1e3 * read_s / len(frames), 3), "raw_chunks": writer.raw_chunks}


def paced(folder: Path, rate_hz: float = 1000.0, seconds: float = 3.0) -> dict[str, float]:
    """``put`` as the acquisition loop calls it at ``rate_hz`` (64x256 frames, the 1 kHz bench's size)."""
    frames = np.random.default_rng(0).integers(100, 3000, (50, 64, 256)).astype(np.uint16)
    n = int(rate_hz * seconds)
    writer = ChunkedMovieWriter(folder / "paced.zchunks", frames.shape[1:], frames.dtype, 2000,
                                chunk_frames_for(frames[0].nbytes, rate_hz, 0.25), 0.25)
    puts = np.empty(n)
    cpu0, due = time.process_time(), time.perf_counter()
    for i in range(n):
        due += 1.0 / rate_hz
        while time.perf_counter() < due:
            time.sleep(0.0002)
        t0 = time.perf_counter_ns()
        writer.put(frames[i % len(frames)])
        puts[i] = time.perf_counter_ns() - t0
    writer.close()
    return {"frames": n, "rate_hz": rate_hz, "put_p50_us": round(float(np.median(puts)) / 1e3, 1),
            "put_p99_us": round(float(np.percentile(puts, 99)) / 1e3, 1),
            "process_cpu_s": round(time.process_time() - cpu0, 3), "frames_lost": writer.frames_lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--paced", action="store_true", help="time put() at 1 kHz instead")
    args = parser.parse_args()
    if args.paced:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(paced(Path(tmp))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = {"sim_512": measure(sim_frames(args.frames), Path(tmp)),
               "synthetic_256": measure(synth_frames(args.frames), Path(tmp))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
