"""The files the supervisor itself writes in a session folder: ``session.json`` and the config copies.

``session.json`` is rewritten while the session runs (status, metadata): it is how ``rig console`` finds a
running rig's command endpoint, and how offline tools learn the software version and clock anchor.
"""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from llvmlite import binding as llvm

import rig
from rig.app.config import RigConfig
from rig.core.clock import now_ns
from rig.core.store import write_json_atomic


def git_hash() -> str:
    """The commit this software runs from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
            timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def cpu_target() -> str:
    """The CPU the numba kernels are compiled for, as LLVM names it, and its widest vector unit. Kernels compiled with
    ``fastmath`` may sum in another order for another one, so a session replayed on another CPU can differ in the
    last bits of F (``rig replay`` says so when it finds mismatches)."""
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # llvmlite cannot read them on every platform: the CPU's name is recorded alone then
        features = {}
    widest = next((name for name in ("avx512f", "avx2", "avx", "sse4.2", "neon") if features.get(name)), "")
    return f"{llvm.get_host_cpu_name()} {widest}".strip()


def session_dir_name(stamp: str, mouse_id: str, rig_name: str) -> str:
    """``<stamp>_<mouse>_<rig>``; without a mouse ID ``<stamp>_<rig>`` (never an empty part, so never ``__``).

    Characters other than letters, digits, ``-`` and ``_`` in the mouse ID become ``-`` (a ``/`` would make
    a sub-folder); ``_`` stays the separator of the parts.
    """
    mouse = "".join(c if c.isalnum() or c in "-_" else "-" for c in mouse_id.strip()).strip("-_")
    return "_".join(part for part in (stamp, mouse, rig_name) if part)


def new_session_dir(cfg: RigConfig, root: str | None) -> Path:
    """``<root>/<YYYYmmdd-HHMMSS>_<mouse>_<rig>`` (:func:`session_dir_name`), made unique with a suffix when two
    start in one second."""
    base = Path(root or cfg.rig.sessions_dir)
    name = session_dir_name(datetime.now().strftime("%Y%m%d-%H%M%S"), cfg.session.mouse_id, cfg.rig.name)
    path = base / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{name}_{suffix}"
    path.mkdir(parents=True)
    return path


class SessionRecord:
    """Writes ``session.json``; what never changes during a session is taken once, at construction."""

    def __init__(self, session_dir: Path, cfg: RigConfig, config_path: str, overrides: list[str]) -> None:
        self.session_dir = session_dir
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = list(overrides)
        self.started = datetime.now().astimezone().isoformat(timespec="milliseconds")
        self.git = git_hash()  # once: session.json is rewritten while the loop runs
        self.cpu = cpu_target()
        # Anchor between the bus clock (now_ns) and wall-clock time, for exports that need absolute times.
        self.clock_anchor = {"t_ns": now_ns(), "unix_ns": time.time_ns()}

    def write_config(self, config_text: str, config_doc: dict[str, Any]) -> None:
        """The config file as given, and as validated with defaults and --set overrides (what really ran)."""
        (self.session_dir / "config.toml").write_text(config_text, encoding="utf-8")
        write_json_atomic(self.session_dir / "config.resolved.json", config_doc)

    def write(self, status: str, metadata: dict[str, str], endpoints: dict[str, str], processes: list[str]) -> None:
        write_json_atomic(self.session_dir / "session.json", {
            "format": "bci-rig session v1",
            "status": status,
            "software": {"name": "bci-rig", "version": rig.__version__, "git": self.git,
                         "python": platform.python_version(), "platform": platform.platform(),
                         "cpu": self.cpu},
            "rig": self.cfg.rig.name,
            "config_file": self.config_path,
            "overrides": self.overrides,
            "started": self.started,
            "updated": datetime.now().astimezone().isoformat(timespec="seconds"),
            "clock": self.clock_anchor,
            "metadata": metadata,
            "endpoints": endpoints,
            "processes": processes,
        })
