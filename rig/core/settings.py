"""Settings every process shares: the [rig], [bus] and [session] sections, and config errors.

Part of the contract: the base process class reads these sections. The whole-file schema, which also
holds every process package's own section, is composed above the process packages in
``rig.app.config``. Range checks inside a section's ``__post_init__`` raise
``ValueError("`field`: must be ...")`` so the field lands in the key path of the :class:`ConfigError`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from rig.core.addresses import is_loopback


class ConfigError(ValueError):
    """A config file that cannot be used. ``key`` is a dotted path like ``reward.min_interval_s``."""

    def __init__(self, file: str, key: str, problem: str, value: Any = None, has_value: bool = False) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.value = value
        where = f"{file}: [{key}]: " if key else f"{file}: "
        got = f" (got {value!r})" if has_value else ""
        super().__init__(f"{where}{problem}{got}")


PRIORITIES = ("normal", "high", "realtime")
BACKGROUND_PRIORITIES = ("normal", "low")
DECODER_GC = ("default", "idle")
TRANSPORTS = ("tcp", "ipc")
MOVIE_CODECS = ("zstd", "raw")  # rig.core.movie_file

#: The control characters TOML escapes produce, back to the escape the author typed (``\e`` is TOML 1.1).
_TOML_ESCAPES = {"\b": r"\b", "\t": r"\t", "\n": r"\n", "\f": r"\f", "\r": r"\r", "\x1b": r"\e"}


def control_character_problem(value: str) -> str:
    r"""Why a path-valued setting holding a control character is wrong ("" when it holds none).

    No path or device name has one; in a config file it nearly always comes from a Windows path in a TOML
    basic string, where each backslash starts an escape: ``"D:\bci\rigs"`` loads as ``"D:<backspace>ci<CR>igs"``.
    The answer names the first such character and what precedes it, and shows the path as typed in single
    quotes when it can be rebuilt (every control character in it came from an escape).
    """
    bad = [i for i, c in enumerate(value) if ord(c) < 32 or ord(c) == 127]
    if not bad:
        return ""
    before = value[: bad[0]]
    shown = before if len(before) <= 40 else "..." + before[-40:]
    where = f'after "{shown}"' if before else "at the start"
    problem = (f"contains a control character (\\x{ord(value[bad[0]]):02x} {where}): a backslash in a TOML "
               '"..." string starts an escape; write the path with / or in single quotes')
    if not all(value[i] in _TOML_ESCAPES for i in bad):
        return problem  # from a \uXXXX escape or pasted in: the path as typed cannot be rebuilt
    typed = "".join(_TOML_ESCAPES.get(c, c) for c in value)
    if "'" in typed:  # a single-quoted TOML string cannot hold a quote: offer the forward-slash form
        return f'{problem}: "{typed.replace(chr(92), "/")}"'
    return f"{problem}: '{typed}'"


class RigSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "unnamed-rig"
    description: str = ""
    sessions_dir: str = "sessions"
    # Real-time tuning of every process (see docs/PERFORMANCE.md). gc_freeze moves everything allocated
    # during configure() out of the garbage collector's sight, so a collection never scans it mid-session.
    gc_freeze: bool = True
    gc_gen0_threshold: int = 10_000  # Python's default is 700: fewer, equally short young collections
    priority: str = "normal"  # "high": raise OS scheduling priority (Windows: HIGH_PRIORITY_CLASS; POSIX needs root)
    cpu_affinity: dict[str, list[int]] = {}  # process name -> CPU numbers, e.g. {acquisition = [1]}
    # Busy-poll this long before each expected frame instead of sleeping (decoder, reward): saves the OS
    # wake-up latency (0.1-1 ms on VMs and power-saving CPUs) for ~3x this much CPU per frame. 0: off.
    spin_wait_ms: float = 0.0
    # How often a running process looks for a control message (stop, safe_state...) while its steps come back to
    # back (1 kHz frames): at most this late, not on every step. 0: every step. A heartbeat is due by its own clock.
    control_poll_ms: float = 2.0
    # Python's GIL switch interval in the critical processes, in ms (0: Python's own, 5 ms). A loop thread that
    # wants the GIL from a background thread (the reference build, the movie writer) waits up to this long.
    switch_interval_ms: float = 0.0
    # Levers measured in docs/PERFORMANCE.md ("Levers"). "realtime" priority: SCHED_FIFO on Linux (needs root or
    # CAP_SYS_NICE; refused -> a warning and normal priority), HIGH_PRIORITY_CLASS on Windows; critical processes only.
    # background_priority "low" (the default: it helped in every paired run): the console and the movie writer
    # thread at a lower priority and, when cpu_affinity pins the decoder, kept off its CPUs. decoder_gc "idle": no
    # automatic GC in the decoder; its young generations are collected right after a decision, where a pause
    # delays nothing.
    background_priority: str = "low"
    decoder_gc: str = "default"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError("`name`: must be letters, digits, '_', '.' or '-' (it goes into folder names)")
        if self.priority not in PRIORITIES:
            raise ValueError(f"`priority`: must be one of {', '.join(PRIORITIES)}")
        if self.background_priority not in BACKGROUND_PRIORITIES:
            raise ValueError(f"`background_priority`: must be one of {', '.join(BACKGROUND_PRIORITIES)}")
        if self.decoder_gc not in DECODER_GC:
            raise ValueError(f"`decoder_gc`: must be one of {', '.join(DECODER_GC)}")
        if not 0 <= self.spin_wait_ms <= 10:
            raise ValueError("`spin_wait_ms`: must be within [0, 10] ms")
        if not 0 <= self.control_poll_ms <= 20:
            raise ValueError("`control_poll_ms`: must be within [0, 20] ms")
        if not (self.switch_interval_ms == 0 or 0.05 <= self.switch_interval_ms <= 50):
            raise ValueError("`switch_interval_ms`: must be 0 (Python's own) or within [0.05, 50] ms")
        if self.gc_gen0_threshold < 100:
            raise ValueError("`gc_gen0_threshold`: must be >= 100")
        for name, cpus in self.cpu_affinity.items():
            if not cpus or any(c < 0 for c in cpus):
                raise ValueError(f"`cpu_affinity`: {name} needs a non-empty list of CPU numbers >= 0")


class BusSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    transport: str = "tcp"
    host: str = "127.0.0.1"
    base_port: int = 0
    heartbeat_interval_s: float = 0.25
    heartbeat_liveness: int = 8
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    busy_timeout_s: float = 60.0  # silence allowed while a process says it is busy (e.g. calibrating)
    # CURVE keys (docs/SECURITY.md, `rig keys init`): "" = none, every socket on loopback as before. Relative to
    # the config file's folder. With keys only the rig's processes and the consoles listed in it get in.
    keys_dir: str = ""
    # The acquisition -> decoder frames (the stream the loop waits on): "bus" = over the ZeroMQ bus like every
    # other stream; "direct" = a loopback TCP socket straight to the decoder (rig/core/direct_link.py: one kernel
    # wake-up instead of four thread hops), the bus still carrying every frame for the console.
    fluor_link: str = "bus"

    def __post_init__(self) -> None:
        if self.fluor_link not in ("bus", "direct"):
            raise ValueError(f"`fluor_link`: must be \"bus\" or \"direct\", not {self.fluor_link!r}")
        if not self.keys_dir and not is_loopback(self.host):
            raise ValueError(f"`host`: {self.host!r} opens the command socket (valve, stop) and every stream to the "
                             "network, so it needs keys: run `rig keys init KEYS_DIR` and `rig keys add-console "
                             "KEYS_DIR NAME`, then set [bus] keys_dir = \"KEYS_DIR\" (or keep host = \"127.0.0.1\")")
        if self.transport not in TRANSPORTS:
            raise ValueError("`transport`: must be \"tcp\" or \"ipc\" (Unix domain sockets between the rig's own "
                             "processes where the OS has them; the command socket stays tcp)")
        if not (self.base_port == 0 or 1024 <= self.base_port <= 65000):
            raise ValueError("`base_port`: must be 0 (pick free ports) or between 1024 and 65000")
        if not 0.01 <= self.heartbeat_interval_s <= 5:
            raise ValueError("`heartbeat_interval_s`: must be between 0.01 and 5 seconds")
        if self.heartbeat_liveness < 2:
            raise ValueError("`heartbeat_liveness`: must be >= 2 missed heartbeats")
        if self.ready_timeout_s <= 0 or self.stop_timeout_s <= 0 or self.busy_timeout_s <= 0:
            raise ValueError("`ready_timeout_s`: timeouts must be > 0")


class SessionSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Start the baseline as soon as every process runs, without waiting for the operator's click (a
    # headless session always does). With task.auto_protocol the whole session then runs by itself.
    auto_start: bool = False
    save_frames: bool = True
    mouse_id: str = ""  # required by `rig run` for a real scope (rig.app.checks); part of the folder name
    experimenter: str = ""
    notes: str = ""
    flush_interval_s: float = 0.05
    # "zstd": the movie byte-shuffled and zstd-compressed in self-contained chunks of movie_chunk_s (movie.zchunks,
    # ~1.6x smaller, lossless); "raw": uncompressed (movie.raw). docs/SESSION_FORMAT.md.
    movie_codec: str = "zstd"
    movie_chunk_s: float = 0.25
    # Record frames only (`rig run --record-only`): acquisition saves the movie and shows previews; no ROIs,
    # decoder, reward, feedback or calibration (a first baseline for `rig detect`). docs/DETECT.md.
    record_only: bool = False

    def __post_init__(self) -> None:
        if self.record_only and not self.save_frames:
            raise ValueError("`record_only`: a recording keeps frames only, so it needs save_frames = true")
        if self.movie_codec not in MOVIE_CODECS:
            raise ValueError(f"`movie_codec`: must be one of {', '.join(MOVIE_CODECS)}")
        if not 0.01 <= self.movie_chunk_s <= 1.0:
            raise ValueError("`movie_chunk_s`: must be between 0.01 and 1 s (a crash loses at most about this)")
        if not 0.001 <= self.flush_interval_s <= 0.1:
            raise ValueError("`flush_interval_s`: must be between 0.001 and 0.1 s (a crash loses at most this)")


_PATH_RE = re.compile(r"^(?P<problem>.*) - at `\$(?P<path>[^`]*)`$", re.S)


def _lookup(data: Any, parts: list[str | int]) -> tuple[bool, Any]:
    node = data
    for part in parts:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        parts.append(name if name else int(index))
    return parts


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_TOML_TYPES = {"object": "table", "array": "array", "str": "string", "int": "integer", "float": "number",
               "bool": "true/false", "null": "nothing"}


def _toml_type(msgspec_type: str) -> str:
    """msgspec's type names in the words of TOML, which is what the operator wrote."""
    return " or ".join(_TOML_TYPES.get(part.strip(), part.strip()) for part in msgspec_type.split("|"))


def validate_section(data: Any, schema: type, file: str = "<config>") -> Any:
    """Validate parsed TOML into ``schema`` (a msgspec struct) or raise :class:`ConfigError` naming the key."""
    try:
        return msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        raise to_config_error(str(exc), data, file) from None


def to_config_error(text: str, data: dict[str, Any], file: str) -> ConfigError:
    match = _PATH_RE.match(text)
    problem, path = (match["problem"], match["path"]) if match else (text, "")
    parts = _split_path(path)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:
        parts.append(unknown[1])
        return ConfigError(file, _dotted(parts), "unknown key (misspelt, or not valid in this section)")
    field_check = re.match(r"`([^`]+)`: (.*)", problem, re.S)
    if field_check:
        parts.append(field_check[1])
        problem = field_check[2]
    missing = re.match(r"Object missing required field `([^`]+)`", problem)
    if missing:
        parts.append(missing[1])
        return ConfigError(file, _dotted(parts), "required key is missing")
    found, value = _lookup(data, parts)
    expected = re.match(r"^Expected `([^`]+)`, got `([^`]+)`(.*)", problem, re.S)
    if expected:
        problem = f"expected {_toml_type(expected[1])}, got {_toml_type(expected[2])}{expected[3]}"
    return ConfigError(file, _dotted(parts), problem, value, has_value=found)
