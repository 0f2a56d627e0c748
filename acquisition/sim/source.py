"""The simulated scope as a frame source: frames paced like a real scan, a mouse that hears the rig.

Frame ``k`` is scanned during ``[t0 + k/fps, t0 + (k+1)/fps)`` (plus the scope's timestamp jitter) and is
handed out when complete. It is rendered ahead of its due time, so ``read`` spends the wait sleeping,
not computing. A consumer that falls more than ``max_lag_frames`` behind loses frames, as with a real
scope whose driver buffer overflows: the lost frames are still simulated (biology and motion go on,
ground truth is kept) but not rendered, and frame numbers jump.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acquisition.sim.config import SimConfig
from acquisition.sim.export import write_ground_truth
from acquisition.sim.scope import FrameInfo, SimScope
from acquisition.sources.base import Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.schema import FeedbackUpdate, RewardOutcome

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

_N_BUFFERS = 4  # frames handed out stay valid until this many more reads


class SimSource(FrameSource):
    """``FrameSource`` over :class:`SimScope`; bus messages reach the simulated mouse.

    Registered with every capability (:mod:`acquisition.sources.registry`): ground truth, hearing rewards
    and decisions, following the decoder's ensembles.
    """

    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> SimSource:
        """The registry's factory: ``[acquisition.sim]``; the mouse starts with the decoder's configured ensembles."""
        return cls(cfg.sim, frame_rate_hz=cfg.frame_rate_hz, up=list(ctx.up), down=list(ctx.down))

    def __init__(self, cfg: SimConfig, frame_rate_hz: float, up: list[int], down: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.scope = SimScope(cfg, frame_rate_hz, up=up, down=down)
        self._shape = self.scope.shape
        self._rate = float(frame_rate_hz)
        self._period_ns = 1e9 / self._rate
        self._buffers = np.zeros((_N_BUFFERS, *self._shape), np.uint16)
        self._slot = 0
        self._pending: FrameInfo | None = None
        self._t0_ns = 0
        self._open = False
        self._closed = False
        self._after_gap = False
        self._history_warned = False
        self._frames = 0
        self._dropped = 0
        self._rewards = 0
        self._feedback_heard = 0
        self._render_ns_total = 0
        self._render_ns_max = 0

    # ------------------------------------------------------------ FrameSource interface

    def open(self) -> None:
        self._open = True

    def _start_clock(self) -> None:
        """The simulated scope starts scanning at the first read, like a real scope started by the rig:
        the time between open() (configure) and the session start is not lost frames."""
        self._t0_ns = now_ns()

    def close(self) -> None:
        self._open = False
        self._closed = True

    def link_state(self) -> str:
        if self._open:
            return "ok"
        return "ended" if self._closed else "waiting"

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame when it is complete, or None if that takes longer than ``timeout_s``."""
        if not self._open:
            raise RuntimeError("SimSource.read() called before open() or after close()")
        if not self._t0_ns:
            self._start_clock()
        if self._pending is None:
            if self.cfg.realtime:
                self._drop_frames_behind()
            t = now_ns()
            self._pending = self.scope.render(self._buffers[self._slot])
            spent = now_ns() - t
            self._render_ns_total += spent
            self._render_ns_max = max(self._render_ns_max, spent)
            if self.scope.history_truncated and not self._history_warned:
                self._history_warned = True
                self.warn(
                    "sim_history_full",
                    f"simulated scope: ground truth is kept for the first {self.cfg.history_max_frames} frames "
                    "only (acquisition.sim.history_max_frames); later frames have none",
                )
        info = self._pending
        if self.cfg.realtime:
            wait_ns = self._due_ns(info) - now_ns()
            if wait_ns > 0:
                if wait_ns > timeout_s * 1e9:
                    time.sleep(max(timeout_s, 0.0))
                    return None
                time.sleep(wait_ns / 1e9)
        frame = Frame(
            data=self._buffers[self._slot],
            number=info.number,
            t_ready_ns=now_ns(),
            scope_time_s=info.scope_time_s,
            flags=int(FrameFlag.AFTER_GAP) if self._after_gap else 0,
        )
        self._after_gap = False
        self._pending = None
        self._slot = (self._slot + 1) % _N_BUFFERS
        self._frames += 1
        return frame

    def stats(self) -> dict[str, float]:
        n = max(self._frames, 1)
        mouse = self.scope.mouse.state()
        return {
            "frames": float(self._frames),
            "bad_frames": 0.0,
            "frames_dropped": float(self._dropped),
            "render_ms_mean": self._render_ns_total / n / 1e6,
            "render_ms_max": self._render_ns_max / 1e6,
            "rewards_heard": float(self._rewards),
            "feedback_heard": float(self._feedback_heard),
            "mouse_drive_up_hz": mouse["drive_up_hz"],
            "mouse_drive_down_hz": mouse["drive_down_hz"],
        }

    def on_bus_message(self, msg: Any) -> None:
        """Rewards teach the mouse; what the feedback process presented (``fbk.update``) is its feedback.

        The decoder's decisions are not: with no feedback process (``[feedback] enabled = false``) the mouse
        perceives nothing of the cursor, so learning without feedback can be simulated."""
        mouse = self.scope.mouse
        if isinstance(msg, RewardOutcome):
            if msg.status == "delivered":
                self._rewards += 1
                mouse.on_reward()
        elif isinstance(msg, FeedbackUpdate):
            self._feedback_heard += 1
            if self.cfg.mouse.use_feedback:
                mouse.on_feedback(msg.perceived)

    # ------------------------------------------------------------ capabilities (see the registry)

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """The decoder applied new ensembles: the mouse now tries to move those cells (ROI i == cell i).
        Indices the simulated field does not have are reported, not raised: the scope must keep running."""
        try:
            self.scope.mouse.set_ensembles(up, down)
        except ValueError as exc:
            self.warn("sim_ensembles", f"new ensembles ignored by the simulated mouse: {exc}")

    def write_ground_truth(self, folder: str | Path, n_frames: int | None = None) -> Path:
        """The sim's ROIs (suite2p layout) and per-frame truth so far; see
        :func:`acquisition.sim.export.write_ground_truth`."""
        return write_ground_truth(self.scope, folder, n_frames)

    def _due_ns(self, info: FrameInfo) -> float:
        return self._t0_ns + (info.scope_time_s * 1e9 + self._period_ns)

    def _drop_frames_behind(self) -> None:
        """Skip (simulate, do not render) frames the consumer is too late for."""
        limit = now_ns() - self.cfg.max_lag_frames * self._period_ns
        skipped = 0
        while self._t0_ns + (self.scope.frames_generated + 1) * self._period_ns < limit:
            self.scope.skip()
            skipped += 1
        if skipped:
            self._dropped += skipped
            self._after_gap = True
            self.warn(
                "sim_frames_lost",
                f"simulated scope: the reader was more than max_lag_frames={self.cfg.max_lag_frames} frames "
                f"behind real time; {skipped} frame(s) lost, up to frame {self.scope.frames_generated - 1}",
            )
