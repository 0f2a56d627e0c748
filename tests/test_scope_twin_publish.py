"""scripts/publish_frames.py --planes: a multi-plane movie over the ZeroMQ stream, each frame with its plane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from acquisition.sources.zmq_stream import ZmqStreamSource
from tests.conftest import wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish_frames.py"


def publish(path: Path, endpoint: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(path), "--endpoint", endpoint, "--connect", "--fast",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_publish_frames_sends_each_volumes_planes(tmp_path):
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 4000, (7, 12, 10), dtype=np.uint16)  # 3 volumes of 2 planes and a stray frame
    path = tmp_path / "volumes.npy"
    np.save(path, stack)
    src = ZmqStreamSource("tcp://127.0.0.1:0", bind=True, n_planes=2)
    src.open()
    try:
        proc = publish(path, src.bound_endpoint, "--planes", "2")
        got = [wait_for(lambda: src.read(0.1), 30, f"frame {k}") for k in range(6)]
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) | {"seconds": 0, "frames_per_s": 0} == {
            "frames": 6, "volumes": 3, "seconds": 0, "frames_per_s": 0}
        assert "the last 1 frame(s) are not sent" in err
        assert [(f.plane, f.number) for f in got] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
        np.testing.assert_array_equal(np.stack([f.data for f in got]), stack[:6])
        stats = src.stats()
        for code in ("planes_mismatch", "plane_out_of_range", "frames_not_volumes", "bad_planes_count",
                     "frames_missed"):
            assert stats[code] == 0, (code, stats)
        assert src.read(0.2) is None  # the incomplete last volume was not sent
    finally:
        src.close()


def test_publish_frames_refuses_a_plane_with_planes(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((4, 8, 8), np.uint16))
    proc = publish(tmp_path / "m.npy", "tcp://127.0.0.1:1", "--planes", "2", "--plane", "1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--plane names the plane of a single-plane stream" in err
