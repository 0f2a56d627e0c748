"""Everything that travels on the bus: message types, their topics, and the wire codec.

Wire format (one ZeroMQ multipart message per bus message)::

    frame 0   topic          ASCII, e.g. b"acq.fluor"; subscribers filter on it (prefix match)
    frame 1   header         msgpack array: [type tag, schema version, stream seq, sender, *fields]
    frame 2.. array payloads raw C-contiguous bytes, one frame per numpy array field, in field order

Numpy array fields are encoded in the header as ``[index, dtype, shape]`` and their bytes travel as
separate frames, sent and received without copying. ``seq`` is per (sender, topic) stream and starts
at 1; receivers count gaps with :class:`GapCounter`. Every stamp is ``rig.core.clock.now_ns()``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import numpy as np

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A bus message could not be decoded: names the topic and what was wrong."""


class Message(msgspec.Struct, tag=True, array_like=True):
    """Base of every bus message. ``seq`` and ``sender`` are filled in by the publisher."""

    topic: ClassVar[bytes] = b""
    v: int = SCHEMA_VERSION
    seq: int = 0
    sender: str = ""


# ---------------------------------------------------------------- lifecycle (every process)


class StateChange(Message, tag="state", kw_only=True):
    """A process moved through its lifecycle (configuring, ready, running, stopping, stopped, failed)."""

    topic: ClassVar[bytes] = b"sys.state"
    process: str
    state: str
    reason: str = ""
    t_ns: int = 0


class Heartbeat(Message, tag="hb", kw_only=True):
    """Published by every process every ``bus.heartbeat_interval_s``; ``stats`` are small counters."""

    topic: ClassVar[bytes] = b"sys.hb"
    process: str
    state: str
    t_ns: int = 0
    pid: int = 0
    stats: dict[str, float] = {}


class ProcessError(Message, tag="error", kw_only=True):
    """An exception a process could not handle. It stops after sending this."""

    topic: ClassVar[bytes] = b"sys.error"
    process: str
    error_type: str
    message: str
    traceback: str = ""
    t_ns: int = 0


class RigWarning(Message, tag="warn", kw_only=True):
    """Something the operator should see (bad frames, link lost, refused reward...)."""

    topic: ClassVar[bytes] = b"sys.warn"
    process: str
    code: str
    message: str
    t_ns: int = 0


class Control(Message, tag="control", kw_only=True):
    """A command from the supervisor to the processes (operator commands are relayed through it).

    Commands: start, stop, shutdown, safe_state, start_baseline, calibrate, start_bci, pause, resume,
    manual_reward, test_pulse, close_valve, set_ensembles.
    """

    topic: ClassVar[bytes] = b"sys.control"
    command: str
    args: dict[str, Any] = {}
    issued_by: str = "supervisor"
    target: str = ""  # one process's name, or "" for every process
    t_ns: int = 0


# ---------------------------------------------------------------- acquisition


class FluorFrame(Message, tag="fluor", kw_only=True):
    """Per-ROI fluorescence for one frame, with the stage stamps so far."""

    topic: ClassVar[bytes] = b"acq.fluor"
    frame: int
    t_ready: int
    t_registered: int
    t_extracted: int
    dy: float
    dx: float
    corr: float
    flags: int
    F: np.ndarray
    Fneu: np.ndarray
    t_sent: int = 0


class PlaneFluor(Message, tag="planefluor", kw_only=True):
    """Per-ROI fluorescence of one frame of a plane that does *not* drive the BCI (multi-plane acquisition).

    The BCI plane's frames go out as :class:`FluorFrame` on ``acq.fluor`` (what the decoder hears); the other
    planes' on ``acq.plane``, a topic the decoder does not subscribe to, for the console. ``frame`` is the
    volume number (the BCI frame of the same volume has the same number)."""

    topic: ClassVar[bytes] = b"acq.plane"
    plane: int
    frame: int
    t_ready: int
    dy: float
    dx: float
    corr: float
    flags: int
    F: np.ndarray
    Fneu: np.ndarray


class Preview(Message, tag="preview", kw_only=True):
    """A decimated registered image for the console, a few times per second."""

    topic: ClassVar[bytes] = b"acq.preview"
    frame: int
    dy: float
    dx: float
    corr: float
    image: np.ndarray
    t_ns: int = 0
    z_um: float = float("nan")  # the focal plane's latest depth estimate (acquisition.ztrack); NaN without z-tracking
    plane: int = 0  # which imaging plane the image is of (multi-plane acquisition; docs/PLANES.md)


class AcqStatus(Message, tag="acqstat", kw_only=True):
    """Acquisition counters, once per second: frames, drops, bad frames, source link state."""

    topic: ClassVar[bytes] = b"acq.status"
    frames: int
    frames_dropped: int
    bad_frames: int
    link: str
    fps: float
    t_ns: int = 0


# ---------------------------------------------------------------- decoder


class Decision(Message, tag="decision", kw_only=True):
    """The decoder's output for one frame: cursor, feedback and trial state."""

    topic: ClassVar[bytes] = b"dec.decision"
    frame: int
    t_ready: int
    t_registered: int
    t_extracted: int
    t_received: int
    t_decided: int
    mode: int
    trial: int
    trial_state: int
    up: float
    down: float
    cursor: float
    cursor_norm: float
    tone_hz: float
    angle_bin: int
    reward_requested: bool


class TrialEvent(Message, tag="trial", kw_only=True):
    """Trial and mode transitions: trial_start, hit, miss, iti, pause, resume, baseline_done, ..."""

    topic: ClassVar[bytes] = b"dec.trial"
    kind: str
    trial: int
    frame: int
    t_ns: int = 0
    hits: int = 0
    trials: int = 0
    detail: dict[str, Any] = {}


class CalibrationResult(Message, tag="calib", kw_only=True):
    """Threshold chosen on the baseline, and the curve threshold -> predicted hit rate."""

    topic: ClassVar[bytes] = b"dec.calib"
    threshold: float
    feedback_min: float
    feedback_max: float
    predicted_hit_rate: float
    method: str
    curve_thresholds: list[float] = []
    curve_hit_rates: list[float] = []
    baseline_frames: int = 0
    t_ns: int = 0
    predicted_hit_rate_ci95: list[float] = []  # [lo, hi]: the prediction's 95 % interval (empty: not computed)
    warnings: list[str] = []  # why the prediction should not be trusted as is (too short a baseline, ...)


class RewardRequest(Message, tag="rwdreq", kw_only=True):
    """Ask the reward process for one reward. ``request_id`` is unique within a session."""

    topic: ClassVar[bytes] = b"rwd.req"
    request_id: str
    volume_ul: float
    source: str
    frame: int = -1
    t_ready: int = 0
    t_requested: int = 0
    override: bool = False  # an operator's explicit override of the valve budget (manual rewards only)
    issued_by: str = ""  # who asked, for a manual reward (the authenticated console, see rig.core.auth)


# ---------------------------------------------------------------- reward


class RewardOutcome(Message, tag="rwdout", kw_only=True):
    """What happened to one reward request: delivered, failed or refused (never silent)."""

    topic: ClassVar[bytes] = b"rwd.out"
    request_id: str
    status: str
    reason: str
    volume_ul: float
    open_ms: float
    source: str
    frame: int = -1
    t_ready: int = 0
    t_requested: int = 0
    t_written: int = 0
    t_ack: int = 0
    t_done: int = 0
    board_us_ack: int = -1
    board_us_done: int = -1


class Lick(Message, tag="lick", kw_only=True):
    """A lick onset/offset. ``t_ns`` is the board time mapped to the host clock (0 until the clocks are
    synchronised); ``t_received`` is when the host read the line."""

    topic: ClassVar[bytes] = b"rwd.lick"
    onset: bool
    board_us: int
    t_ns: int = 0
    t_received: int = 0


class LinkState(Message, tag="link", kw_only=True):
    """Serial link to the reward board: connected, lost, reconnecting, watchdog_tripped."""

    topic: ClassVar[bytes] = b"rwd.link"
    state: str
    detail: str = ""
    t_ns: int = 0


class FeedbackUpdate(Message, tag="fbk", kw_only=True):
    """What the feedback process presented for one decision (the simulated mouse perceives ``perceived``)."""

    topic: ClassVar[bytes] = b"fbk.update"
    frame: int
    t_decided: int
    t_flip: int  # when the grating update was drawn (0: no display)
    tone_hz: float  # NaN: silent
    orientation_deg: float  # NaN: grey screen
    perceived: float  # the normalised cursor readable from the stimulus (NaN: none)


AnyMessage = (
    StateChange
    | Heartbeat
    | ProcessError
    | RigWarning
    | Control
    | FluorFrame
    | PlaneFluor
    | Preview
    | AcqStatus
    | Decision
    | TrialEvent
    | CalibrationResult
    | RewardRequest
    | RewardOutcome
    | Lick
    | LinkState
    | FeedbackUpdate
)

ALL_MESSAGE_TYPES: tuple[type[Message], ...] = AnyMessage.__args__  # type: ignore[attr-defined]
TOPICS: dict[bytes, type[Message]] = {cls.topic: cls for cls in ALL_MESSAGE_TYPES}


# ---------------------------------------------------------------- codec


class Codec:
    """Encode/decode messages to multipart frames. One instance per socket (it reuses buffers)."""

    def __init__(self) -> None:
        self._out_arrays: list[np.ndarray] = []
        self._in_frames: list[Any] = []
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        self._decoder = msgspec.msgpack.Decoder(AnyMessage, dec_hook=self._dec_hook)

    def _enc_hook(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
            self._out_arrays.append(arr)
            return (len(self._out_arrays) - 1, arr.dtype.str, list(arr.shape))
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot put {type(obj).__name__} on the bus")

    def _dec_hook(self, typ: type, obj: Any) -> Any:
        if typ is np.ndarray:
            try:
                index, dtype, shape = obj
                buf = self._in_frames[index]
                arr = np.frombuffer(buf, dtype=np.dtype(dtype))
                return arr.reshape(shape)
            except (ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"bad array payload {obj!r}: {exc}") from exc
        raise NotImplementedError(f"no decoder for {typ}")

    def encode(self, msg: Message) -> list[Any]:
        self._out_arrays.clear()
        header = self._encoder.encode(msg)
        frames: list[Any] = [msg.topic, header]
        frames.extend(self._out_arrays)
        self._out_arrays.clear()
        return frames

    def decode(self, frames: list[Any]) -> Message:
        """Decode a received multipart message. Array fields are read-only views of the frames."""
        if len(frames) < 2:
            raise SchemaError(f"expected topic + header frames, got {len(frames)} frame(s)")
        topic = bytes(frames[0])
        self._in_frames = [memoryview(f) if not isinstance(f, bytes) else f for f in frames[2:]]
        try:
            msg = self._decoder.decode(frames[1])
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            version = _peek_version(frames[1])
            if version is not None and version != SCHEMA_VERSION:
                raise SchemaError(
                    f"topic {topic!r}: schema version {version}, this build speaks {SCHEMA_VERSION}"
                ) from exc
            raise SchemaError(f"topic {topic!r}: undecodable header: {exc}") from exc
        finally:
            self._in_frames = []
        if msg.v != SCHEMA_VERSION:
            raise SchemaError(
                f"topic {topic!r}: schema version {msg.v} from {msg.sender!r}, this build speaks {SCHEMA_VERSION}"
            )
        if msg.topic != topic:
            raise SchemaError(f"topic {topic!r} carries a {type(msg).__name__} (expected topic {msg.topic!r})")
        return msg


def _peek_version(header: Any) -> int | None:
    """The schema version of a header this build could not decode, if it is readable at all."""
    try:
        raw = msgspec.msgpack.decode(header)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, list) and len(raw) > 1 and isinstance(raw[1], int):
        return raw[1]
    return None


class GapCounter:
    """Counts missing sequence numbers per (sender, topic) stream."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, bytes], int] = {}
        self.gaps = 0
        self.received = 0

    def observe(self, msg: Message) -> int:
        """Record ``msg``; return how many messages of its stream were missed just before it."""
        self.received += 1
        key = (msg.sender, msg.topic)
        last = self._last.get(key)
        self._last[key] = msg.seq
        if last is None or msg.seq <= last:
            return 0  # first message of the stream, or the sender restarted
        missed = msg.seq - last - 1
        self.gaps += missed
        return missed
