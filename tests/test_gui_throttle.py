"""The console keeps up with a 30 Hz, 500-ROI session, and a stalled console stays bounded.

Bounded: the console's frame socket holds at most ``frame_rcvhwm`` messages; beyond that ZeroMQ drops
for this subscriber only (the publisher never blocks), the sequence numbers count what was missed, and
the model's rings never grow.
"""

from __future__ import annotations

import pytest

from gui.config import GuiConfig
from gui.main_window import MainWindow
from gui.session import ConsoleSession
from tests.gui_fakes import FakeRig

WAIT_MS = 20_000


def ring_buffers(model) -> dict[str, int]:
    rings = {"decisions": model.decisions, "fluor": model.fluor, "latency": model.latency}
    return {f"{name}.{col}": arr.__array_interface__["data"][0]
            for name, ring in rings.items() for col, arr in ring.columns.items()}


@pytest.fixture
def window_factory(qtbot):
    made = []

    def make(endpoint: str, **cfg) -> MainWindow:
        window = MainWindow(ConsoleSession(GuiConfig(**cfg), endpoint))
        qtbot.addWidget(window)
        window.show()
        made.append(window)
        return window

    yield make
    for window in made:
        window.close()
        window.session.close()


def test_keeps_up_with_30_hz_and_500_rois(qtbot, tmp_path, window_factory):
    with FakeRig(tmp_path / "s", n_rois=500, rate_hz=30.0) as rig:
        rig.start_stream()
        window = window_factory(rig.endpoints["command"], refresh_hz=15.0, history_s=10.0)
        m = window.model
        qtbot.waitUntil(lambda: len(m.decisions) > 0, timeout=WAIT_MS)
        buffers, memory = ring_buffers(m), m.memory_bytes()
        first = int(m.decisions.last("frame"))
        qtbot.waitUntil(lambda: rig.frames_published >= first + 90, timeout=WAIT_MS)  # 3 s at 30 Hz
        rig.stop_stream()
        last = rig.frames_published
        qtbot.waitUntil(lambda: len(m.decisions) and m.decisions.last("frame") == last
                        and m.fluor.last("frame") == last, timeout=WAIT_MS)
        reader = window.session.reader
        assert reader.gaps == 0 and reader.bad_messages == 0  # nothing dropped at 30 Hz x 500 ROIs
        assert m.fluor.total >= last - first and m.n_rois_seen == 500
        assert ring_buffers(m) == buffers and m.memory_bytes() == memory  # preallocated, never grown


def test_a_stalled_console_drops_instead_of_growing(qtbot, tmp_path, window_factory):
    # A small publisher queue too, so the drop happens within a short burst (the rig's is larger).
    with FakeRig(tmp_path / "s", n_rois=500, sndhwm=100) as rig:
        rig.start_stream()
        window = window_factory(rig.endpoints["command"], frame_rcvhwm=100, history_s=10.0,
                                max_frame_rate_hz=30.0)
        m = window.model
        qtbot.waitUntil(lambda: len(m.decisions) > 0, timeout=WAIT_MS)
        rig.stop_stream()
        last_streamed = rig.frames_published
        qtbot.waitUntil(lambda: m.decisions.last("frame") == last_streamed == m.fluor.last("frame"),
                        timeout=WAIT_MS)
        buffers, memory = ring_buffers(m), m.memory_bytes()
        received_before, decisions_before = m.fluor.total, m.decisions.total
        window.timer.stop()  # the console stalls: nobody reads its sockets
        rig.burst(5000)  # ~170 s of frames at 30 Hz, published as fast as possible
        assert rig.burst_done.wait(60), "the publisher blocked on a stalled subscriber"
        while window.session.tick():  # the console wakes up and drains what is left
            pass
        reader = window.session.reader
        received = m.fluor.total - received_before
        assert 0 < received < 5000  # bounded by the socket high-water marks, not by the burst
        window.timer.start()
        rig.start_stream()  # once the stream resumes the console is current again...
        qtbot.waitUntil(lambda: m.decisions.last("frame") > last_streamed + 5000 + 10, timeout=WAIT_MS)
        # ...and every frame it never saw is counted from the sequence numbers (FluorFrame + Decision).
        missed_fluor = (m.fluor.last("frame") - last_streamed) - (m.fluor.total - received_before)
        missed_decisions = (m.decisions.last("frame") - last_streamed) - (m.decisions.total - decisions_before)
        assert reader.frames.gaps.gaps == missed_fluor + missed_decisions > 0
        assert len(m.decisions) <= m.decisions.capacity
        assert ring_buffers(m) == buffers and m.memory_bytes() == memory
