"""Rig configuration: TOML files in ``hardware_configs/``, validated at load.

Each package owns the schema of its own section (``acquisition.config``, ``decoder.config``,
``reward.config``, ``gui.config``); this module composes them and turns every validation failure into
a :class:`ConfigError` that names the file, the key path, the bad value and what was expected.
Range checks inside a section's ``__post_init__`` raise ``ValueError("`field`: must be ...")`` so the
field lands in the key path.
"""

from __future__ import annotations

import tomllib
from pathlib import Path, PureWindowsPath
from typing import Any

import msgspec

from acquisition.config import AcquisitionConfig
from decoder.config import DecoderConfig, TaskConfig
from gui.config import GuiConfig
from reward.config import RewardConfig
from reward.feedback.config import FeedbackConfig
from rig.core.settings import (
    BusSection,
    ConfigError,
    RigSection,
    SessionSection,
    control_character_problem,
    validate_section,
)
from rig.offline.detect_config import DetectConfig


class RigConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rig: RigSection = msgspec.field(default_factory=RigSection)
    bus: BusSection = msgspec.field(default_factory=BusSection)
    acquisition: AcquisitionConfig = msgspec.field(default_factory=AcquisitionConfig)
    decoder: DecoderConfig = msgspec.field(default_factory=DecoderConfig)
    task: TaskConfig = msgspec.field(default_factory=TaskConfig)
    reward: RewardConfig = msgspec.field(default_factory=RewardConfig)
    session: SessionSection = msgspec.field(default_factory=SessionSection)
    gui: GuiConfig = msgspec.field(default_factory=GuiConfig)
    feedback: FeedbackConfig = msgspec.field(default_factory=FeedbackConfig)
    detect: DetectConfig = msgspec.field(default_factory=DetectConfig)


#: How a process started by the supervisor turns the document into a :class:`RigConfig` (see ``ProcessSpec``).
CONFIG_LOADER = "rig.app.config:config_from_dict"


def config_from_dict(data: dict[str, Any], file: str = "<config>") -> RigConfig:
    """Validate a parsed TOML document into a :class:`RigConfig` or raise :class:`ConfigError`."""
    return validate_section(data, RigConfig, file)


#: Config keys that name files. Relative paths in a config file are relative to that file's folder (so a
#: rig folder can be moved as a whole); relative paths given with --set are relative to the working directory.
PATH_KEYS = (
    ("acquisition", "rois", "suite2p_dir"),
    ("acquisition", "replay", "path"),
    ("acquisition", "registration", "ref_path"),
    ("acquisition", "ztrack", "stack_path"),
    ("acquisition", "scanbox_mmap", "path"),
    ("reward", "calibration_file"),
    ("bus", "keys_dir"),
)


#: Keys whose value names a file, folder, device or socket: a control character in one is a TOML escape the
#: author did not mean (a Windows path in "..."), rejected at load with the fix (see ``control_character_problem``).
NO_CONTROL_CHARACTER_KEYS = (
    *PATH_KEYS,
    ("rig", "sessions_dir"),
    ("reward", "port"),
    ("acquisition", "zmq_stream", "endpoint"),
)


def check_control_characters(data: dict[str, Any], file: str) -> None:
    """Raise :class:`ConfigError` for the first path-valued key holding a control character.

    Run on the document as parsed, before relative paths are resolved, so the message shows what was typed.
    """
    for keys in NO_CONTROL_CHARACTER_KEYS:
        node: Any = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        problem = control_character_problem(node) if isinstance(node, str) else ""
        if problem:
            raise ConfigError(file, ".".join(keys), problem)


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
        if tuple(keys) in NO_CONTROL_CHARACTER_KEYS and isinstance(value, str):
            problem = control_character_problem(value)
            if problem:
                raise ConfigError("--set", ".".join(keys), problem)
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
    check_control_characters(data, str(path))
    _resolve_path_keys(data, path.resolve().parent)
    return apply_overrides(data, overrides or [])
