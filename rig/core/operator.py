"""The command socket's contract: what consoles and CLI tools send the supervisor, and what it answers.

Defined once here and used by both ends: the supervisor (``rig.app.command_server``, ``rig.app.snapshot``),
the console (``gui.commands``, ``gui.session``, ``gui.model``) and the test fakes. The wire is JSON (one
object per ZeroMQ message, Lazy-Pirate REQ clients in :mod:`rig.core.client`), so any tool can talk to a
rig; these structs give both ends the same field names and types, and turn a malformed message into a
readable error instead of a ``KeyError`` deep in a handler.

Compatibility: a request with an unknown field is refused (a mistyped ``arg`` must not silently drop the
volume of a manual reward); a reply or snapshot with an unknown field is accepted (an older console keeps
working with a newer supervisor).

Bounds: whoever can reach the command socket can send anything, so a request is refused unless it fits a typed
schema with limits (docs/SECURITY.md): at most :data:`MAX_REQUEST_BYTES`, argument values that are scalars or
flat lists of scalars (no nesting to recurse on), and each command's own arguments (:func:`check_args`) in
range: finite numbers, ROI indices below the ROI count, bounded lists and strings. Nothing outside them reaches
a handler, a log line or the bus.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from rig.core.schema import CalibrationResult

#: Commands the supervisor answers itself.
SUPERVISOR_COMMANDS = frozenset({"ping", "snapshot", "stop"})

#: Operator commands the supervisor validates, logs and relays to the processes as ``Control`` messages.
OPERATOR_COMMANDS = frozenset({
    "start_baseline", "calibrate", "start_bci", "pause", "resume", "end_block", "manual_reward",
    "test_pulse", "flush", "close_valve", "set_ensembles", "set_metadata",
})

#: Every command name the command socket accepts.
KNOWN_COMMANDS = SUPERVISOR_COMMANDS | OPERATOR_COMMANDS


#: The largest request body the command socket decodes (a request is a few hundred bytes).
MAX_REQUEST_BYTES = 64 * 1024
#: Most ROIs in one ensemble, and the largest ROI index anyone may name before the ROI count is checked.
MAX_ENSEMBLE_ROIS = 1024
MAX_ROI_INDEX = 2**31 - 1
#: set_metadata: keys per request, characters per value (notes included), keys the session keeps in all.
MAX_METADATA_KEYS = 8
MAX_METADATA_VALUE = 4096
MAX_METADATA_TOTAL_KEYS = 32
#: The largest manual reward (µl) a request may ask for; the valve budget bounds what is delivered.
MAX_MANUAL_VOLUME_UL = 100.0
#: The longest flush (ms) a request may ask for; the reward process and the board bound each opening further.
MAX_FLUSH_MS = 10_000.0

_Short = Annotated[str, msgspec.Meta(max_length=128)]
_Scalar = str | int | float | bool | None
#: An argument value: a scalar or a flat list of them (nothing nested deeper, so nothing to recurse on).
ArgValue = _Scalar | Annotated[list[_Scalar], msgspec.Meta(max_length=MAX_ENSEMBLE_ROIS)]


class CommandRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One request on the command socket.

    ``request_id`` is the same for every retry of one request: the supervisor answers a repeat from its
    cache instead of acting twice (a lost reply must never mean two manual rewards). ``issued_by`` is what
    the client says it is; with keys the command server replaces it with the name of the client's key.
    """

    command: Annotated[str, msgspec.Meta(max_length=64)]
    args: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], ArgValue], msgspec.Meta(max_length=16)] = {}
    issued_by: _Short = "console"
    request_id: _Short = ""


class _NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Commands that take no arguments."""


_RoiList = Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=MAX_ROI_INDEX)]],
                     msgspec.Meta(max_length=MAX_ENSEMBLE_ROIS)]


class _CalibrateArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    target_hit_rate: Annotated[float, msgspec.Meta(gt=0, lt=1)] | msgspec.UnsetType = msgspec.UNSET
    allow_rois: _RoiList = []  # the operator's explicit override of the F0 safeguards for these ROIs


class _ManualRewardArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    volume_ul: Annotated[float, msgspec.Meta(gt=0, le=MAX_MANUAL_VOLUME_UL)] | msgspec.UnsetType = msgspec.UNSET
    override: bool = False  # the operator's explicit override of the valve budget (reward/process.py)


class _TestPulseArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    override: bool = False


class _FlushArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ms: Annotated[float, msgspec.Meta(gt=0, le=MAX_FLUSH_MS)]
    override: bool = False


class _SetEnsemblesArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    up: _RoiList = []
    down: _RoiList = []


_MetadataArgs = Annotated[
    dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
         Annotated[str, msgspec.Meta(max_length=MAX_METADATA_VALUE)]],
    msgspec.Meta(max_length=MAX_METADATA_KEYS)]

#: Each command's argument schema.
ARG_SCHEMAS: dict[str, Any] = {
    "ping": _NoArgs, "snapshot": _NoArgs, "stop": _NoArgs, "start_baseline": _NoArgs, "start_bci": _NoArgs,
    "pause": _NoArgs, "resume": _NoArgs, "end_block": _NoArgs, "test_pulse": _TestPulseArgs, "flush": _FlushArgs,
    "close_valve": _NoArgs,
    "calibrate": _CalibrateArgs, "manual_reward": _ManualRewardArgs, "set_ensembles": _SetEnsemblesArgs,
    "set_metadata": _MetadataArgs,
}

#: What an argument must be, for the refusal (the schema's own text follows in parentheses).
_ARG_HELP = {
    "up": f"up must be a list of ROI indices (integers >= 0, at most {MAX_ENSEMBLE_ROIS})",
    "down": f"down must be a list of ROI indices (integers >= 0, at most {MAX_ENSEMBLE_ROIS})",
    "volume_ul": f"volume_ul must be a number of microlitres in (0, {MAX_MANUAL_VOLUME_UL:g}]",
    "target_hit_rate": "target_hit_rate must be a number between 0 and 1",
    "ms": f"ms must be the open time in ms, in (0, {MAX_FLUSH_MS:g}]",
    "override": "override must be true or false",
    "allow_rois": f"allow_rois must be a list of ROI indices (integers >= 0, at most {MAX_ENSEMBLE_ROIS})",
}
_METADATA_HELP = (f"metadata is at most {MAX_METADATA_KEYS} keys (letters, digits, '_', '.', '-') with text values "
                  f"of at most {MAX_METADATA_VALUE} characters")
_PATH = re.compile(r" - at `\$\.?([A-Za-z0-9_]*)")


def check_args(command: str, args: dict[str, Any], n_rois: int | None = None) -> str:
    """Why ``command``'s arguments are unusable, or "" (checked before anything is acted on or relayed).

    ``n_rois``: the ROI count of the running acquisition, which ROI indices must stay below (None: not checked).
    """
    schema = ARG_SCHEMAS.get(command)
    if schema is None:
        return f"unknown command {command!r}"
    try:
        typed = msgspec.convert(args, schema)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if command == "set_metadata":
            return f"{_METADATA_HELP} ({text})"
        unknown = re.search(r"unknown field `([^`]*)`", text)
        if unknown:
            takes = ", ".join(schema.__struct_fields__) or "no arguments"
            return f"unknown argument {unknown[1]!r} (takes {takes})"
        match = _PATH.search(text) or re.search(r"missing required field `([^`]*)`", text)
        return f"{_ARG_HELP.get(match[1] if match else '', 'bad argument')} ({text})"
    if isinstance(typed, _SetEnsemblesArgs) and n_rois is not None:
        for key, rois in (("up", typed.up), ("down", typed.down)):
            past = [i for i in rois if i >= n_rois]
            if past:
                return f"{key}: ROI {past[0]} does not exist (the rig extracts {n_rois} ROIs, 0..{n_rois - 1})"
    return ""


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
    predicted_hit_rate_ci95: list[float] = []  # [lo, hi]
    warnings: list[str] = []  # calibration warnings (shown as a banner by the console)

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


def follow_protocol(kind: str, frame: int, detail: dict[str, Any], baseline: BaselineProgress | None,
                    calibration_failure: str) -> tuple[BaselineProgress | None, str]:
    """(the baseline being recorded, why the last calibration failed) after one decoder trial event.

    One rule for the supervisor's snapshot and the console, so that a console joining late shows what one
    that watched from the start shows: a new baseline or a calibration clears the failure.
    """
    if kind == "baseline_start":
        return BaselineProgress(start_frame=frame, frames=int(detail.get("frames", 0))), ""
    if kind in ("baseline_done", "baseline_loaded"):
        return None, calibration_failure
    if kind == "calibration_failed":
        return baseline, str(detail.get("error", "no reason given"))
    if kind == "calibrated":
        return baseline, ""
    return baseline, calibration_failure


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
