"""Real-time levers a process pulls on itself: real-time scheduling, background threads, GC timing, GC watching.

Each is a ``[rig]`` switch (docs/PERFORMANCE.md, "Levers") with a clean fallback: what the OS refuses is
returned as a sentence for the caller to report as a warning, never ignored and never fatal.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any

from rig.core.clock import now_ns

#: SCHED_FIFO priority of the critical processes (1-99; above every normal task, far below the kernel's own).
FIFO_PRIORITY = 10
#: how much lower (POSIX nice) the background threads and processes run
BACKGROUND_NICE = 10


def set_realtime_scheduling() -> str:
    """SCHED_FIFO for this process (Linux), HIGH_PRIORITY_CLASS (Windows). Returns "" or why it was refused."""
    if sys.platform == "win32":
        import psutil  # noqa: PLC0415

        try:
            psutil.Process().nice(psutil.HIGH_PRIORITY_CLASS)
        except (psutil.Error, OSError) as exc:
            return f"HIGH_PRIORITY_CLASS refused: {exc}"
        return ""
    if not hasattr(os, "sched_setscheduler"):
        return f"no SCHED_FIFO on {sys.platform}"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
    except OSError as exc:  # EPERM without root / CAP_SYS_NICE / an RLIMIT_RTPRIO
        return f"SCHED_FIFO refused ({exc.strerror or exc}; needs root, CAP_SYS_NICE or an rtprio limit)"
    return ""


def zmq_io_threads() -> list[int]:
    """Native ids of this process's ZeroMQ I/O threads (Linux: named ``ZMQbg/IO/<n>`` by libzmq)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    found = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm", encoding="utf-8", errors="replace") as comm:
                name = comm.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith("ZMQbg/IO/"):
            found.append(int(tid))
    return sorted(found)


def raise_zmq_io_threads(priority: int = FIFO_PRIORITY) -> tuple[int, str]:
    """SCHED_FIFO for the ZeroMQ I/O threads that already run in this process. Returns how many were found and
    "" or what was refused (none found on Linux is said too: their names may have changed with libzmq).

    Why: every bus message passes through the sender's and the receiver's I/O thread. libzmq starts them with
    the process's first socket, before ``rig.priority`` is applied, so they stayed at normal priority while the
    loop's threads ran at SCHED_FIFO, and they waited for a CPU whenever those kept both busy (docs/PERFORMANCE.md:
    the bus hop). Threads started later inherit the creating thread's policy. Windows' priority class covers every
    thread of the process; elsewhere there is nothing to do."""
    if not hasattr(os, "SCHED_FIFO"):
        return 0, ""
    found = zmq_io_threads()
    if not found:
        return 0, "no ZeroMQ I/O thread found under /proc/self/task (libzmq names them ZMQbg/IO/<n>)"
    return len(found), raise_threads({f"ZeroMQ I/O thread {tid}": tid for tid in found}, priority)


def raise_threads(threads: dict[str, int], priority: int = FIFO_PRIORITY) -> str:
    """SCHED_FIFO for threads of this process already running (name -> native id). Returns "" or what was refused.
    Where there is no SCHED_FIFO (Windows: the priority class covers every thread), nothing to do."""
    if not hasattr(os, "SCHED_FIFO"):
        return ""
    problems = []
    for name, tid in threads.items():
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except OSError as exc:
            problems.append(f"{name}: SCHED_FIFO refused ({exc.strerror or exc})")
    return "; ".join(problems)


def scheduling_policy() -> str:
    """The OS scheduling policy of this process, for the record ("fifo", "other", ...)."""
    if not hasattr(os, "sched_getscheduler"):
        return "n/a"
    policy = os.sched_getscheduler(0)
    return {getattr(os, "SCHED_FIFO", -1): "fifo", getattr(os, "SCHED_RR", -1): "rr",
            getattr(os, "SCHED_OTHER", -1): "other"}.get(policy, str(policy))


def background_cpus(avoid: list[int]) -> list[int]:
    """The CPUs this process may use, without ``avoid`` (the decoder's); all of them if that leaves none."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0) - set(avoid))
    return allowed


def lower_this_thread(avoid_cpus: list[int]) -> str:
    """Run the calling thread at a lower priority, off ``avoid_cpus``. Returns "" or what was refused.

    Linux: a thread is a task, so ``sched_setscheduler``/``setpriority``/``sched_setaffinity`` with its native id
    act on it alone (a real-time policy inherited from the process is dropped first).
    Windows: ``SetThreadPriority(THREAD_PRIORITY_BELOW_NORMAL)``; affinity is left to the process.
    """
    problems = []
    if sys.platform == "win32":
        import ctypes  # noqa: PLC0415

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        if not kernel32.SetThreadPriority(kernel32.GetCurrentThread(), -1):
            problems.append("SetThreadPriority refused")
        return "; ".join(problems)
    tid = threading.get_native_id()
    if hasattr(os, "SCHED_FIFO") and os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
        # a thread inherits its process's SCHED_FIFO (rig.priority = "realtime"), where nice means nothing: a
        # background thread at the loop's real-time priority would take the CPU from it; back to normal first
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            problems.append(f"leaving {scheduling_policy()} refused: {exc.strerror or exc}")
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
    except OSError as exc:
        problems.append(f"nice refused: {exc.strerror or exc}")
    cpus = background_cpus(avoid_cpus)
    if avoid_cpus and cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError as exc:
            problems.append(f"affinity {cpus} refused: {exc.strerror or exc}")
    return "; ".join(problems)


class GcWatch:
    """Counts the garbage collector's passes in this process through ``gc.callbacks`` (what made a frame late).

    :meth:`since` returns the passes since the last call: ``(count, total ms, oldest generation)``.
    """

    def __init__(self) -> None:
        self._t0 = 0
        self.passes = 0
        self.ns = 0
        self.generation = -1
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = now_ns()
        else:
            self.passes += 1
            self.ns += now_ns() - self._t0
            self.generation = max(self.generation, int(info.get("generation", 0)))

    def since(self) -> tuple[int, float, int]:
        out = (self.passes, self.ns / 1e6, self.generation)
        self.passes, self.ns, self.generation = 0, 0, -1
        return out

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


class IdleCollector:
    """``decoder_gc = "idle"``: automatic collection off; :meth:`collect_if_due` runs it where a pause is free.

    Called right after a decision (the next frame is a frame period away). The young generations are collected
    when their counts reach the thresholds the automatic collector would use; the oldest generation (small:
    startup objects are frozen) only by :meth:`close` or an explicit ``gc.collect()``.
    """

    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.collections = 0
        gc.disable()

    def collect_if_due(self) -> None:
        c0, c1, _ = gc.get_count()
        if c0 >= self.thresholds[0]:
            gc.collect(1 if c1 >= self.thresholds[1] else 0)
            self.collections += 1

    def close(self) -> None:
        gc.enable()
