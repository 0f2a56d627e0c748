"""Rig configuration: TOML files in ``hardware_configs/``, validated at load.

Each package owns the schema of its own section (``acquisition.config``, ``decoder.config``,
``reward.config``, ``gui.config``); this module composes them and turns every validation failure into
a :class:`ConfigError` that names the file, the key path, the bad value and what was expected.
Range checks inside a section's ``__post_init__`` raise ``ValueError("`field`: must be ...")`` so the
field lands in the key path.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PureWindowsPath
from typing import Any

import msgspec

from acquisition.config import AcquisitionConfig
from decoder.config import DecoderConfig, TaskConfig
from gui.config import GuiConfig
from reward.config import RewardConfig


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


PRIORITIES = ("normal", "high")


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

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError("`name`: must be letters, digits, '_', '.' or '-' (it goes into folder names)")
        if self.priority not in PRIORITIES:
            raise ValueError(f"`priority`: must be one of {', '.join(PRIORITIES)}")
        if not 0 <= self.spin_wait_ms <= 10:
            raise ValueError("`spin_wait_ms`: must be within [0, 10] ms")
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

    def __post_init__(self) -> None:
        if self.transport != "tcp":
            raise ValueError("`transport`: must be \"tcp\" (the only transport that works on Windows rigs)")
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
    mouse_id: str = "sim-mouse"
    experimenter: str = ""
    notes: str = ""
    flush_interval_s: float = 0.05

    def __post_init__(self) -> None:
        if not 0.001 <= self.flush_interval_s <= 0.1:
            raise ValueError("`flush_interval_s`: must be between 0.001 and 0.1 s (a crash loses at most this)")


class RigConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rig: RigSection = msgspec.field(default_factory=RigSection)
    bus: BusSection = msgspec.field(default_factory=BusSection)
    acquisition: AcquisitionConfig = msgspec.field(default_factory=AcquisitionConfig)
    decoder: DecoderConfig = msgspec.field(default_factory=DecoderConfig)
    task: TaskConfig = msgspec.field(default_factory=TaskConfig)
    reward: RewardConfig = msgspec.field(default_factory=RewardConfig)
    session: SessionSection = msgspec.field(default_factory=SessionSection)
    gui: GuiConfig = msgspec.field(default_factory=GuiConfig)


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


def config_from_dict(data: dict[str, Any], file: str = "<config>") -> RigConfig:
    """Validate a parsed TOML document into a :class:`RigConfig` or raise :class:`ConfigError`."""
    try:
        return msgspec.convert(data, RigConfig)
    except msgspec.ValidationError as exc:
        raise _to_config_error(str(exc), data, file) from None


def _to_config_error(text: str, data: dict[str, Any], file: str) -> ConfigError:
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


#: Config keys that name files. Relative paths in a config file are relative to that file's folder (so a
#: rig folder can be moved as a whole); relative paths given with --set are relative to the working directory.
PATH_KEYS = (
    ("acquisition", "rois", "suite2p_dir"),
    ("acquisition", "replay", "path"),
    ("acquisition", "registration", "ref_path"),
    ("reward", "calibration_file"),
)


def _is_absolute(value: str) -> bool:
    """Absolute on this OS, or a Windows path with a drive (a rig config written for the scope PC)."""
    return Path(value).expanduser().is_absolute() or bool(PureWindowsPath(value).drive)


def _resolve_path_keys(data: dict[str, Any], base: Path, only: tuple[str, ...] | None = None) -> None:
    for keys in PATH_KEYS:
        if only is not None and keys != only:
            continue
        node: Any = data
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(keys[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not _is_absolute(value):
            node[keys[-1]] = str((base / Path(value).expanduser()).resolve())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"acquisition.sim.n_cells=50"`` -> (["acquisition", "sim", "n_cells"], 50).

    The value is read as TOML (``50``, ``2.5``, ``true``, ``[1, 2]``, ``"text"``); a bare word that is
    not valid TOML is taken as a string, so ``reward.port=COM3`` works as typed.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY.PATH=VALUE, e.g. acquisition.sim.n_cells=50")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``KEY.PATH=VALUE`` overrides (see :func:`parse_override`) into a parsed TOML document."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", ".".join(keys), f"{key!r} is a value, not a section")
        node[keys[-1]] = value
        if tuple(keys) in PATH_KEYS:
            _resolve_path_keys(data, Path.cwd(), tuple(keys))
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RigConfig:
    """Read and validate a rig TOML file. Every failure is a :class:`ConfigError` naming the file."""
    return config_from_dict(load_config_dict(path, overrides), str(path))


def load_config_dict(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The parsed (not yet validated) TOML document with ``overrides`` applied."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    _resolve_path_keys(data, path.resolve().parent)
    return apply_overrides(data, overrides or [])
