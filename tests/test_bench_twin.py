"""The bench's scope twin: frames rendered before the run arrive unchanged over the real CLOOSE and ZeroMQ sources."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.sources.registry import make_source
from rig.app.config import apply_overrides, config_from_dict
from rig.offline.scope_twin import TwinSender, free_port, render_twin_movie, rig_overrides
from tests.conftest import wait_for

SIM = ["acquisition.sim.height_px=64", "acquisition.sim.width_px=96", "acquisition.sim.n_cells=12"]


@pytest.fixture
def twin_movie(tmp_path):
    return render_twin_movie(SIM, 20, 200.0, tmp_path, progress=False)


@pytest.mark.parametrize("scope", ["cloose", "zmq"])
def test_the_twin_streams_its_frames_over_a_real_scope_link(twin_movie, scope):
    frames = np.load(twin_movie.frames)
    assert frames.shape == (20, 64, 96) and (twin_movie.rois / "stat.npy").exists()
    port = free_port()
    cfg = config_from_dict(apply_overrides({}, rig_overrides(scope, port, 64, 96)), "test")
    source = make_source(cfg.acquisition)
    source.open()
    sender = TwinSender(scope, port, twin_movie, 50.0)
    sender.start()
    try:
        source.start_keeping()
        got = wait_for(lambda: source.read(0.1), 30, f"a frame over {scope}")
        # the zmq stream numbers frames as the sender does; CLOOSE numbers from the first kept: compare pixels
        index = next(i for i in range(len(frames)) if np.array_equal(frames[i], got.data))
        second = wait_for(lambda: source.read(0.1), 10, "the next frame")
        np.testing.assert_array_equal(second.data, frames[(index + 1) % len(frames)])  # in order, looping
    finally:
        sent = sender.finish()
        source.close()
    assert sent["frames_sent"] >= 2 and sent["exit_code"] == 0
    assert not twin_movie.frames.exists()  # the rendered frames do not outlive the run
