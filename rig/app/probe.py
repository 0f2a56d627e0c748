"""``rig check --probe``: open the scope link as the acquisition process would and see whether frames come.

A wrong port, a firewall, a scope script not started or streaming elsewhere, a frame size set wrong: each
looks, from the rig's side, like a session that runs and receives nothing useful. The probe opens the
configured frame source with the acquisition's own code (listen, bind or connect), waits a few seconds for
a frame, and reports what arrived: frames per second and frame size, beside what the config expects, and
an ASCII thumbnail of the last frame (a transposed, inverted or noise-like image is obvious at a glance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np

from acquisition.sources.base import EndOfStream
from acquisition.sources.registry import make_source
from rig.app.checks import CheckResult, Finding
from rig.app.config import RigConfig
from rig.offline.problems import describe_source

#: After the first frame, frames are counted this long to measure the rate.
MEASURE_S = 2.0
#: The ASCII preview's width in characters (rows are half as dense: terminal cells are tall).
PREVIEW_COLUMNS = 48
#: Dark to bright.
_SHADES = " .:-=+*#%@"
#: A measured frame rate this far (relative) from acquisition.frame_rate_hz is worth a warning.
RATE_TOLERANCE = 0.15


@dataclass
class ProbeResult:
    """What the link delivered during the probe."""

    frames: int = 0
    seconds: float = 0.0  # from the first frame to the last one counted
    shape: tuple[int, ...] | None = None  # of the first frame
    warnings: list[str] = field(default_factory=list)  # the source's own (link lost, bad headers...)
    last_frame: np.ndarray | None = None  # a copy of the last frame counted, for the preview

    @property
    def frames_per_s(self) -> float:
        return (self.frames - 1) / self.seconds if self.frames > 1 and self.seconds > 0 else 0.0


def probe_source(cfg: RigConfig, wait_s: float = 5.0, measure_s: float = MEASURE_S,
                 clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """Open the configured source, wait up to ``wait_s`` for a frame, then count frames for ``measure_s``.

    Raises OSError (one line: cannot listen, bind or connect) when the link cannot be opened.
    """
    source = make_source(cfg.acquisition, up=cfg.decoder.up, down=cfg.decoder.down)
    source.start_keeping()  # before open: a scope streaming at once must not have its first frames drained
    source.open()
    result = ProbeResult()
    first = 0.0
    try:
        deadline = clock() + wait_s
        while clock() < deadline:
            try:
                frame = source.read(0.05)
            except EndOfStream:
                break
            result.warnings += [f"{code}: {message}" for code, message in source.pop_warnings()]
            if frame is None:
                continue
            now = clock()
            if result.frames == 0:
                first, result.shape = now, tuple(frame.data.shape)
                deadline = now + measure_s
            result.frames += 1
            result.seconds = now - first
            if result.last_frame is None or result.last_frame.shape != frame.data.shape:
                result.last_frame = np.empty_like(frame.data)
            np.copyto(result.last_frame, frame.data)
    finally:
        source.close()
    return result


def probe_findings(cfg: RigConfig, checked: CheckResult, result: ProbeResult, wait_s: float) -> list[Finding]:
    """Judge a probe against the config: no frame and a frame size that is not the ROIs' are errors."""
    acq = cfg.acquisition
    if result.frames == 0:
        return [Finding(f"acquisition.{acq.source}", f"no frame within {wait_s:g} s: "
                                                     f"{describe_source(msgspec.to_builtins(acq))}")]
    findings = []
    rois = checked.rois
    if rois is not None and result.shape is not None and tuple(result.shape) != (rois.height, rois.width):
        findings.append(Finding(f"acquisition.{acq.source}", (
            f"the frames that arrived are {'x'.join(map(str, result.shape))} pixels, the ROIs ({rois.origin}) are "
            f"for {rois.height}x{rois.width}: every frame would be flagged WRONG_SHAPE")))
    rate = result.frames_per_s
    expected = checked.frame_rate_hz or acq.frame_rate_hz
    if rate and abs(rate - expected) > RATE_TOLERANCE * expected:
        hint = (" (the stream has no header: a frame size set wrong shows up as a wrong rate)"
                if acq.source == "cloose_tcp" else "")
        findings.append(Finding("acquisition.frame_rate_hz", (
            f"frames arrive at {rate:.3g} per second but the config says {expected:g} Hz{hint}: the task's times "
            f"are counted in frames of that rate"), error=False))
    return findings


def probe_line(cfg: RigConfig, result: ProbeResult) -> str:
    """One line for the operator: what arrived, or that nothing did."""
    if result.frames == 0:
        return f"probe: {cfg.acquisition.source}: no frame"
    shape = "x".join(map(str, result.shape or ()))
    rate = f", {result.frames_per_s:.3g} frames/s" if result.frames > 1 else ""
    return (f"probe: {cfg.acquisition.source}: {result.frames} frame(s) in {result.seconds:.1f} s{rate}, "
            f"{shape} pixels")


def probe_preview(result: ProbeResult, columns: int = PREVIEW_COLUMNS) -> list[str]:
    """The last frame as ASCII art (1st-99th percentile stretched), [] when none came."""
    image = result.last_frame
    if image is None or image.ndim != 2 or image.size == 0:
        return []
    height, width = image.shape
    cols = max(1, min(columns, width))
    rows = max(1, min(height, round(cols * height / width / 2)))
    small = np.asarray(image, np.float64)[np.linspace(0, height - 1, rows).astype(int)][
        :, np.linspace(0, width - 1, cols).astype(int)]
    finite = small[np.isfinite(small)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    scaled = np.clip((np.nan_to_num(small, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
    index = np.minimum((scaled * len(_SHADES)).astype(int), len(_SHADES) - 1)
    return ["".join(_SHADES[i] for i in row) for row in index]
