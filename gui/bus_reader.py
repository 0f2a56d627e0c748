"""The console's own SUB sockets, drained without ever blocking the window.

Four sockets, so that a flood on one cannot starve another:

* frames  — ``acq.fluor`` and ``dec.decision`` (30+ Hz). Small RCVHWM: when the console falls behind,
  ZeroMQ drops frames for this subscriber only (PUB never blocks), and the gap counter says how many.
* preview — ``acq.preview`` (~4 Hz, large images). Tiny RCVHWM; only the newest image of each plane is used.
* planes  — ``acq.plane``: the fluorescence of the planes that do not drive the BCI (multi-plane acquisition,
  docs/PLANES.md). Its own socket, drained last, so it can never crowd out the BCI plane's frames.
* events  — everything rare and important (trial events, calibration, rewards, licks, link, acquisition
  status, lifecycle, heartbeats, warnings, control). Large RCVHWM so none is lost behind frames.

:meth:`BusReader.pump` hands messages to a sink within a time budget; what is left stays queued
(bounded by RCVHWM) for the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import zmq

from gui.config import GuiConfig
from rig.core.auth import CurveKeys
from rig.core.bus import Subscriber
from rig.core.schema import (
    AcqStatus,
    CalibrationResult,
    Decision,
    FluorFrame,
    Lick,
    LinkState,
    Message,
    PlaneFluor,
    Preview,
    RewardOutcome,
    TrialEvent,
)

FRAME_TOPICS = (FluorFrame.topic, Decision.topic)
PREVIEW_TOPICS = (Preview.topic,)
PLANE_TOPICS = (PlaneFluor.topic,)
EVENT_TOPICS = (b"sys.", TrialEvent.topic, CalibrationResult.topic, RewardOutcome.topic, Lick.topic,
                LinkState.topic, AcqStatus.topic)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "*", "::1", "::"}


def resolve_endpoint(endpoint: str, command_endpoint: str) -> str:
    """Where to connect to ``endpoint`` (as the rig reports it) from a console using ``command_endpoint``.

    The rig reports its PUB endpoints with the host it binds (often 127.0.0.1 or 0.0.0.0). A console on
    another machine reached the rig at the command endpoint's host, so a loopback or wildcard host is
    replaced by that host; any other host is kept.
    """
    parts = urlsplit(endpoint)
    command_host = urlsplit(command_endpoint).hostname
    if parts.scheme != "tcp" or parts.hostname is None or parts.port is None:
        raise ValueError(f"bus endpoint {endpoint!r} is not tcp://HOST:PORT")
    if command_host is None:
        raise ValueError(f"command endpoint {command_endpoint!r} is not tcp://HOST:PORT")
    if parts.hostname in _LOCAL_HOSTS and command_host not in _LOCAL_HOSTS:
        return f"tcp://{command_host}:{parts.port}"
    if parts.hostname in ("0.0.0.0", "*", "::"):
        return f"tcp://127.0.0.1:{parts.port}"
    return endpoint


class BusReader:
    """SUB sockets on every publisher of a rig; see the module docstring."""

    def __init__(self, ctx: zmq.Context, endpoints: Iterable[str], cfg: GuiConfig,
                 keys: CurveKeys | None = None) -> None:
        """``keys``: CURVE client keys, when the rig's publishers let in listed keys only."""
        endpoints = list(endpoints)
        if not endpoints:
            raise ValueError("BusReader needs at least one PUB endpoint")
        self.endpoints = endpoints
        self._budget_s = cfg.drain_budget_ms / 1000.0
        self.events = Subscriber(ctx, endpoints, EVENT_TOPICS, rcvhwm=cfg.event_rcvhwm, keys=keys)
        self.preview = Subscriber(ctx, endpoints, PREVIEW_TOPICS, rcvhwm=cfg.preview_rcvhwm, keys=keys)
        self.frames = Subscriber(ctx, endpoints, FRAME_TOPICS, rcvhwm=cfg.frame_rcvhwm, keys=keys)
        self.planes = Subscriber(ctx, endpoints, PLANE_TOPICS, rcvhwm=cfg.frame_rcvhwm, keys=keys)
        self._subs = (self.events, self.preview, self.frames, self.planes)
        self.received = 0
        self.budget_exhausted = 0  # pumps that stopped on the time budget with input still waiting

    @property
    def gaps(self) -> int:
        """Messages the rig published that this console never received (slow console or late join)."""
        return sum(sub.gaps.gaps for sub in self._subs)

    @property
    def bad_messages(self) -> int:
        return sum(sub.bad_messages for sub in self._subs)

    @property
    def last_error(self) -> str:
        return next((sub.last_error for sub in self._subs if sub.last_error), "")

    def pump(self, sink: Callable[[Message], None]) -> int:
        """Hand waiting messages to ``sink`` (events first, the newest preview of each plane, frames, then the
        other planes' fluorescence) within the budget."""
        deadline = time.perf_counter() + self._budget_s
        count = self._drain(self.events, sink, deadline)
        newest: dict[int, Message] = {}
        msg = self.preview.recv(0)
        while msg is not None:
            newest[getattr(msg, "plane", 0)] = msg
            msg = self.preview.recv(0)
        for msg in newest.values():
            sink(msg)
            count += 1
        count += self._drain(self.frames, sink, deadline)
        count += self._drain(self.planes, sink, deadline)
        self.received += count
        return count

    def _drain(self, sub: Subscriber, sink: Callable[[Message], None], deadline: float) -> int:
        count = 0
        while True:
            if count & 31 == 31 and time.perf_counter() > deadline:
                if sub.poll(0):
                    self.budget_exhausted += 1
                return count
            msg = sub.recv(0)
            if msg is None:
                return count
            sink(msg)
            count += 1

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
