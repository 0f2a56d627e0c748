"""Why every frame is bad: name the likely cause within a second instead of a session of LOW_CORR frames.

A frame size, pixel order, byte order or sign set wrong on either side of a raw stream makes every frame
WRONG_SHAPE or LOW_CORR without any error. Each has a signature:

* size: the stream brings another number of bytes per frame time than the configured frame holds;
* pixel order (C order sent, column-major read): the frame re-read in the other order registers against the
  reference, the frame does not (for a square frame that is the transposed frame);
* sign (inverted data, Scanbox): ``65535 - frame`` registers, and the frame correlates negatively;
* byte order: the byte-swapped frame registers.

Pure functions of numpy arrays and counters: the acquisition process feeds :class:`BadRunWatch` each frame's
flags and gets at most one :class:`Diagnosis` per run of bad frames, which it reports as one warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: a run of bad frames is diagnosed once it lasted this long and this many frames
RUN_S = 0.8
RUN_FRAMES = 5
#: a run no cause explains is reported only once it lasted this long (a brief motion burst is not a problem)
UNKNOWN_RUN_S = 5.0
#: a candidate explains the frames when it registers at least this well, and this many times better than as is
MATCH_MIN = 0.15
MATCH_GAIN = 2.0
#: the byte rate says "another frame size" when bytes per frame time differ from the frame's by this fraction
SIZE_TOLERANCE = 0.08
#: images are block-averaged down to at most this many pixels a side before correlating (speed)
_MAX_SIDE = 128


@dataclass(frozen=True)
class Diagnosis:
    cause: str  # frame_size | pixel_order | inverted | byte_order | unknown
    message: str


def _binned(image: np.ndarray) -> np.ndarray:
    """Block means, at most :data:`_MAX_SIDE` a side, as float64 minus its mean."""
    a = np.asarray(image, dtype=np.float64)
    f = max(1, -(-max(a.shape) // _MAX_SIDE))
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    if f > 1:
        a = a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return a - a.mean()


def phase_match(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak of the phase correlation of two images of one shape (1: identical up to a shift; ~0: unrelated)."""
    a, r = _binned(image), _binned(reference)
    cross = np.fft.rfft2(a) * np.conj(np.fft.rfft2(r))
    cross /= np.abs(cross) + 1e-12
    return float(np.fft.irfft2(cross, s=a.shape).max())


def pearson(image: np.ndarray, reference: np.ndarray) -> float:
    a, r = _binned(image), _binned(reference)
    denom = float(np.sqrt((a * a).sum() * (r * r).sum()))
    return float((a * r).sum() / denom) if denom > 0 else 0.0


def size_from_bytes(bytes_per_frame_time: float, shape: tuple[int, int], itemsize: int = 2) -> str:
    """The frame of ``shape``'s height that holds that many bytes (a measured rate: rounded), "" if under a line."""
    height = shape[0]
    width = round(bytes_per_frame_time / itemsize / height)
    return f"{height}x{width}" if width >= 1 else ""


def diagnose(frame: np.ndarray, reference: np.ndarray | None, *, shape: tuple[int, int], frame_rate_hz: float,
             bytes_per_s: float | None, itemsize: int = 2) -> Diagnosis:
    """The likely cause of frames that do not register (or are the wrong size), for the operator.

    ``shape`` is the configured frame size; ``bytes_per_s`` the stream's recent byte rate (None: not a byte
    stream). Wording always says what was measured, so an "unknown" still helps."""
    height, width = shape
    frame_bytes = height * width * itemsize
    per_frame = None
    if bytes_per_s and frame_rate_hz > 0 and frame_bytes > 0:
        per_frame = bytes_per_s / frame_rate_hz
        if abs(per_frame / frame_bytes - 1) > SIZE_TOLERANCE:
            fits = size_from_bytes(per_frame, shape, itemsize)
            guess = (f"the stream's frame boundaries fit about {fits}, not the configured {height}x{width}?"
                     if fits else f"that is not a {height}x{width} frame")
            return Diagnosis("frame_size", (
                f"bad frames: the stream brings {per_frame:,.0f} bytes per frame time at {frame_rate_hz:g} Hz, a "
                f"{height}x{width} frame of {itemsize}-byte pixels is {frame_bytes:,} bytes: {guess} (check "
                f"height_px/width_px against the scope, and acquisition.frame_rate_hz)"))
    measured = f" ({per_frame:,.0f} bytes per frame time, as configured)" if per_frame else ""
    if reference is None or frame.shape != reference.shape or frame.ndim != 2:
        got = "x".join(map(str, frame.shape))
        return Diagnosis("unknown", f"bad frames: frames are {got}, no reference of that size to compare{measured}")
    as_is = phase_match(frame, reference)
    candidates: list[tuple[str, Callable[[], np.ndarray], str]] = [
        ("pixel_order", lambda: frame.T.reshape(frame.shape),
         "the frame re-read in the other pixel order registers: the scope sends row-major (C order) pixels but "
         "the stream is read column-major (MATLAB img(:)); transpose on the scope side or send img(:)"),
        ("inverted", lambda: np.iinfo(frame.dtype).max - frame if frame.dtype.kind in "ui" else -frame,
         "the inverted frame registers: the data arrive inverted (Scanbox stores data inverted; set invert = true, "
         "or false if the scope side already inverts)"),
        ("byte_order", lambda: frame.byteswap(),
         "the byte-swapped frame registers: set byte_order to the other value"),
    ]
    scores = [(phase_match(make(), reference), cause, text) for cause, make, text in candidates]
    best, cause, text = max(scores)
    if best >= MATCH_MIN and best >= MATCH_GAIN * max(as_is, 0.0):
        extra = f"; correlation with the reference {pearson(frame, reference):+.2f}" if cause == "inverted" else ""
        return Diagnosis(cause, f"bad frames: {text} (match {best:.2f} against {as_is:.2f} as read{extra})")
    return Diagnosis("unknown", f"bad frames: they do not register against the reference (match {as_is:.2f}) and "
                                f"neither transposed, inverted nor byte-swapped frames do{measured}: another field "
                                f"of view, or a frame size that is off by whole frames?")


class BadRunWatch:
    """Follows runs of bad frames; once a run lasted :data:`RUN_S` and :data:`RUN_FRAMES`, diagnoses it once
    (a run no cause explains: once it lasted :data:`UNKNOWN_RUN_S`).

    The byte rate comes from the frames themselves: frame numbers per second of ``t_ready`` (stamped when a
    frame was complete) times the configured frame's bytes is what the stream brings, whatever is cut from it."""

    def __init__(self, run_s: float = RUN_S, run_frames: int = RUN_FRAMES,
                 unknown_run_s: float = UNKNOWN_RUN_S) -> None:
        self._run_ns = int(run_s * 1e9)
        self._unknown_ns = int(unknown_run_s * 1e9)
        self._next_ns = self._run_ns  # run length at which to diagnose next
        self._run_frames = run_frames
        self._first = (0, 0)  # (number, t_ready_ns) of the run's first frame
        self._frames = 0
        self._done = False
        self.diagnoses = 0

    def observe(self, bad: bool, number: int, t_ready_ns: int, frame: np.ndarray, reference: np.ndarray | None, *,
                shape: tuple[int, int], frame_rate_hz: float, byte_stream: bool) -> Diagnosis | None:
        """One frame; a :class:`Diagnosis` when this frame completes a run long enough (once per run).
        ``byte_stream``: the source cuts frames from a header-less byte stream (so the rate tells the size)."""
        if not bad:
            self._frames = 0
            self._done = False
            self._next_ns = self._run_ns
            return None
        if self._frames == 0:
            self._first = (number, t_ready_ns)
        self._frames += 1
        elapsed_ns = t_ready_ns - self._first[1]
        if self._done or self._frames < self._run_frames or elapsed_ns < self._next_ns:
            return None
        rate = None
        if byte_stream and elapsed_ns > 0:
            frame_bytes = shape[0] * shape[1] * frame.dtype.itemsize
            rate = (number - self._first[0]) * frame_bytes / (elapsed_ns / 1e9)
        found = diagnose(frame, reference, shape=shape, frame_rate_hz=frame_rate_hz, bytes_per_s=rate,
                         itemsize=frame.dtype.itemsize)
        if found.cause == "unknown" and elapsed_ns < self._unknown_ns:
            self._next_ns = self._unknown_ns  # look again later; say "unknown" only about a long run
            return None
        self._done = True
        self.diagnoses += 1
        return found
