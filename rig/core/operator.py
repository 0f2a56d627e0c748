"""The command socket's contract: what consoles and CLI tools send the supervisor, and what it answers.

Defined once here and used by both ends: the supervisor (``rig.app.command_server``, ``rig.app.snapshot``),
the console (``gui.commands``, ``gui.session``, ``gui.model``) and the test fakes. The wire is JSON (one
object per ZeroMQ message, Lazy-Pirate REQ clients in :mod:`rig.core.client`), so any tool can talk to a
rig; these structs give both ends the same field names and types, and turn a malformed message into a
readable error instead of a ``KeyError`` deep in a handler.

Compatibility: a request with an unknown field is refused (a mistyped ``arg`` must not silently drop the
volume of a manual reward); a reply or snapshot with an unknown field is accepted (an older console keeps
working with a newer supervisor).
"""

from __future__ import annotations

from typing import Any

import msgspec

from rig.core.schema import CalibrationResult

#: Commands the supervisor answers itself.
SUPERVISOR_COMMANDS = frozenset({"ping", "snapshot", "stop"})

#: Operator commands the supervisor validates, logs and relays to the processes as ``Control`` messages.
OPERATOR_COMMANDS = frozenset({
    "start_baseline", "calibrate", "start_bci", "pause", "resume", "manual_reward",
    "test_pulse", "close_valve", "set_ensembles", "set_metadata",
})

#: Every command name the command socket accepts.
KNOWN_COMMANDS = SUPERVISOR_COMMANDS | OPERATOR_COMMANDS


class CommandRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One request on the command socket.

    ``request_id`` is the same for every retry of one request: the supervisor answers a repeat from its
    cache instead of acting twice (a lost reply must never mean two manual rewards).
    """

    command: str
    args: dict[str, Any] = {}
    issued_by: str = "console"
    request_id: str = ""


class ProcessStatus(msgspec.Struct, kw_only=True):
    """One process as the supervisor sees it (``state`` is ``failed_reported`` once it was given up on)."""

    state: str
    stats: dict[str, float] = {}
    critical: bool = True


class Counts(msgspec.Struct, kw_only=True):
    """Session counters a console that joins late cannot rebuild from the streams."""

    trials: int = 0
    hits: int = 0
    rewards_delivered: int = 0  # rewards for the mouse only: sources "decoder" and "manual"
    rewards_failed: int = 0
    volume_ul: float = 0.0  # delivered reward volume (decoder + manual), as in summary.json
    other_pulses: int = 0  # test pulses, flushes, valve calibration (not rewards), as summary.json's
    other_volume_ul: float = 0.0  # what those of them that were delivered gave


class Calibration(msgspec.Struct, kw_only=True):
    """The calibration in force: the fields of ``CalibrationResult`` an operator sees (no bus header)."""

    threshold: float
    feedback_min: float
    feedback_max: float
    predicted_hit_rate: float
    method: str
    curve_thresholds: list[float] = []
    curve_hit_rates: list[float] = []
    baseline_frames: int = 0

    @classmethod
    def from_result(cls, msg: CalibrationResult) -> Calibration:
        """The operator's view of a ``dec.calib`` message (one place that knows which fields those are)."""
        return cls(**{name: getattr(msg, name) for name in cls.__struct_fields__})


class Ensembles(msgspec.Struct, kw_only=True):
    """The ROI indices of the two ensembles the decoder uses."""

    up: list[int] = []
    down: list[int] = []


class LinkStatus(msgspec.Struct, kw_only=True):
    """The reward board's serial link as last reported on ``rwd.link``: the reward process publishes a
    ``LinkState`` only when it changes, so a console that joins later learns it only from here."""

    state: str
    detail: str = ""


class BaselineProgress(msgspec.Struct, kw_only=True):
    """The baseline being recorded: the frame of the decoder's ``baseline_start`` event and the frames it
    needs (its ``frames``), so a console that joins mid-baseline can count down the time left."""

    start_frame: int
    frames: int


class SnapshotWarning(msgspec.Struct, kw_only=True):
    """A recent warning. ``code`` is "" for the supervisor's own (a lost process), which only snapshots carry;
    warnings with a code were also published on the bus."""

    process: str
    message: str
    code: str = ""


class Snapshot(msgspec.Struct, kw_only=True):
    """What a console that joins late needs: where to listen, process states, counters, calibration.

    ``ensembles`` is None when the sender does not track them (the console then uses the config's);
    ``link`` is None until the reward process reported its link, ``baseline`` None unless a baseline is
    being recorded; ``calibration_failure`` is the reason of the last failed calibration ("" once a
    calibration or a new baseline succeeded it).
    """

    session_dir: str
    endpoints: dict[str, str]  # process name -> its PUB endpoint; "supervisor" and "command" too
    mode: str  # the supervisor's mode: starting, running, done, stopping, stopped
    processes: dict[str, ProcessStatus] = {}
    counts: Counts = msgspec.field(default_factory=Counts)
    calibration: Calibration | None = None
    ensembles: Ensembles | None = None
    warnings: list[SnapshotWarning] = []
    metadata: dict[str, str] = {}
    config: dict[str, Any] = {}  # the validated config document the processes run with
    link: LinkStatus | None = None
    baseline: BaselineProgress | None = None
    calibration_failure: str = ""


class CommandReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The answer to one request: ``{"ok": true}``, ``{"ok": false, "error": ...}``, or a snapshot."""

    ok: bool
    error: str = ""
    snapshot: Snapshot | None = None


_request_decoder = msgspec.json.Decoder(CommandRequest)
_reply_decoder = msgspec.json.Decoder(CommandReply)


def decode_request(body: bytes) -> CommandRequest:
    """Parse and check one request; raises ``msgspec.DecodeError`` (its text names the bad field)."""
    return _request_decoder.decode(body)


def decode_reply(body: bytes) -> CommandReply:
    """Parse and check one reply; raises ``msgspec.DecodeError``."""
    return _reply_decoder.decode(body)


def reply_from_json(obj: Any) -> CommandReply:
    """A reply a client has already parsed as JSON (``CommandClient.request`` returns a dict);
    raises ``msgspec.ValidationError``."""
    return msgspec.convert(obj, CommandReply)


def encode(msg: CommandRequest | CommandReply) -> bytes:
    """The JSON bytes of a request or a reply."""
    return msgspec.json.encode(msg)
