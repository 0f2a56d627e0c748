"""What ``rig run`` says while the rig starts, so the terminal is never silent for more than about a second.

Starting takes seconds (each process spawns a Python, imports numpy, scipy and zmq, opens its device) and,
the first time on a machine or after an update, many more while numba compiles the decoder's and the
registration's kernels. A silent terminal for that long looks hung; so every phase gets a line with its
time (config loaded, each process starting and ready, "running"), and while a process is still starting a
progress line follows every :data:`TICK_S`.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

#: The longest the terminal stays silent while a process starts (seconds).
TICK_S = 1.0
#: Modules holding numba kernels compiled with ``cache=True``, by the process that compiles them when it starts.
KERNEL_MODULES: dict[str, tuple[str, ...]] = {
    "acquisition": ("acquisition.registration",),
    "decoder": ("decoder.dff", "decoder.percentile", "decoder.decoders"),
}


def _cache_indexes(source: Path) -> Iterable[Path]:
    """numba's cache index files (``<module>.<function>-<line>.pyXY.nbi``) for the kernels of ``source``."""
    pattern = f"{source.stem}.*.nbi"
    user_dir = os.environ.get("NUMBA_CACHE_DIR")
    if user_dir:
        return Path(user_dir).rglob(pattern)
    return (source.parent / "__pycache__").glob(pattern)


def kernels_cached(module: str) -> bool:
    """Whether numba has cached the kernels of ``module`` since the module last changed (a good guess: numba
    itself also compares the source's stamp). Only file names and times are read: nothing is imported."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return True  # nothing to compile that we know of
    source = Path(spec.origin)
    try:
        changed = source.stat().st_mtime
        return any(index.stat().st_mtime >= changed for index in _cache_indexes(source))
    except OSError:
        return False


def compiles_kernels(process: str, cached: Callable[[str], bool] = kernels_cached) -> bool:
    """Whether ``process`` will compile numba kernels when it starts (first run, or after an update)."""
    return not all(cached(module) for module in KERNEL_MODULES.get(process, ()))


class StartupLog:
    """The start-up lines of one session; ``log`` prints one line (the supervisor's ``[rig] ...``)."""

    def __init__(self, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 compiles: Callable[[str], bool] = compiles_kernels) -> None:
        self._log = log
        self._clock = clock
        self._compiles = compiles
        self.t0 = clock()
        self._last_line = self.t0
        self._started: dict[str, float] = {}
        self._compiling: set[str] = set()

    def line(self, text: str) -> None:
        self._last_line = self._clock()
        self._log(text)

    def config_loaded(self, text: str) -> None:
        self.line(f"config loaded ({self._clock() - self.t0:.1f} s): {text}")

    def starting(self, name: str, pid: int | None) -> None:
        self._started[name] = self._clock()
        self.line(f"starting {name} (pid {pid})")
        if self._compiles(name):
            self._compiling.add(name)
            self.line(f"{name}: compiling its numba kernels (first run on this PC or after an update: up to ~10 s "
                      f"more; cached for the next runs)")

    def waiting(self, name: str, state: str) -> None:
        """Called while waiting for ``name``: a progress line once :data:`TICK_S` has passed without one."""
        now = self._clock()
        if now - self._last_line < TICK_S:
            return
        doing = state
        if state in ("not started", "configuring"):  # a child's first state change is often lost (slow joiner)
            doing = "starting, compiling kernels" if name in self._compiling else "starting"
        self.line(f"... {name} {doing} ({now - self._started.get(name, self.t0):.0f} s)")

    def ready(self, name: str, note: str = "") -> None:
        took = self._clock() - self._started.get(name, self.t0)
        self.line(f"{name} ready in {took:.1f} s" + (f": {note}" if note else ""))

    def running(self, duration_s: float | None) -> None:
        ends = f"; the session ends in {duration_s:g} s (--duration)" if duration_s else "; Ctrl-C ends the session"
        self.line(f"running: every process started in {self._clock() - self.t0:.1f} s{ends}")
