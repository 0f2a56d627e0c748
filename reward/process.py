"""The reward process (the only one that touches the animal) and the valve-board emulator process.

RewardProcess files (``reward/``): ``events.jsonl`` with one ``reward_outcome`` per request (delivered,
failed or refused, with host and board stamps), licks, link changes, operator overrides;
``valve_calibration.json`` (the calibration this session used). EmulatorProcess files (``valve_emulator/``):
``valve.jsonl``, the simulated board's own log of every valve open/close.

A ``reward_outcome`` line carries, besides the fields of ``rig.core.schema.RewardOutcome`` (``volume_ul`` is
what was asked): ``dispensed_ul`` (what the valve dispensed, from the board-measured open time; see
``reward.outcome.RewardOutcome``), ``volume_kind`` ("reward" for decoder and manual rewards, "other" for
test pulses and flushes), the session's running totals of what the valve dispensed, ``session_reward_ul`` and
``session_other_ul`` (the last line has the session's), ``reconciled``, ``override``, ``issued_by``,
``open_us``, ``seq``, ``attempts`` and ``board_nak``.

Operator commands (Control): ``test_pulse`` (args: ``override``), ``flush`` (args: ``ms``, ``override``),
``close_valve``; ``manual_reward`` reaches this process as a RewardRequest from the decoder. ``override: true``
lets a pulse pass the minimum interval and the session volume cap (never the board's duty-cycle limit); it is
logged with the Control's ``issued_by``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import zmq

from reward.calibration import ValveCalibration
from reward.controller import RewardController
from reward.link import ValveLink
from reward.outcome import SOURCE_FLUSH
from reward.transports import windows_timer_period
from rig.core.bus import SpinWaiter
from rig.core.clock import now_ns
from rig.core.process import RigProcess
from rig.core.schema import Control, Decision, Lick, LinkState, RewardOutcome, RewardRequest
from rig.core.store import write_json_atomic


def request_topics(waiter: SpinWaiter) -> list[bytes]:
    """What the reward process hears from the decoder: reward requests, and decisions only for their timing when
    ``waiter`` busy-polls (``rig.spin_wait_ms``; a request comes just before its frame's decision). Otherwise each
    decision would wake the process for nothing, a wake-up per frame taken from the rig's cores
    (docs/PERFORMANCE.md, tenth round)."""
    return [RewardRequest.topic, Decision.topic] if waiter.spins else [RewardRequest.topic]


class RewardProcess(RigProcess):
    def configure(self) -> None:
        cfg = self.config.reward
        # Windows: a 1 ms timer tick for this process, or every timed wait (the poll below) ends on a 15.6 ms tick.
        self._timer_period = contextlib.ExitStack()
        self._timer_period.enter_context(windows_timer_period(1))
        url = cfg.port
        if cfg.port == "emulator":
            url = self.spec.extra.get("upstream", {}).get("valve_emulator", {}).get("serial_url", "")
            if not url:
                raise RuntimeError("reward.port is \"emulator\" but the emulator reported no serial URL")
        self.calibration = ValveCalibration.for_config(cfg, self.spec.config_file)
        write_json_atomic(self.dir / "valve_calibration.json", self.calibration.to_dict())
        self.link = ValveLink.from_config(cfg, url)
        self.controller = RewardController(cfg, self.calibration, self.link)
        self.controller.start()
        acq = self.spec.extra.get("upstream", {}).get("acquisition", {})
        if "frame_rate_hz" not in acq:
            raise RuntimeError("the acquisition process did not report its frame rate when ready")
        self._waiter = SpinWaiter(1.0 / float(acq["frame_rate_hz"]), self.config.rig.spin_wait_ms)
        self.requests = self.subscribe(["decoder"], request_topics(self._waiter))
        self._lost_reported = 0
        self._bad_reported = 0
        self._poller = zmq.Poller()
        self._poller.register(self.requests.socket, zmq.POLLIN)
        self._polled_fd: int | None = None
        self.delivered = 0
        self.failed = 0
        self.events.write("link_url", url=url, calibration_source=str(getattr(self.calibration, "source", "")))

    def step(self) -> None:
        # Wake on whichever comes first: a reward request or bytes from the board. The link's descriptor
        # (the port's, or for Windows COM ports its reader thread's wake-up socket) changes when it
        # reconnects; while it has none (port closed) poll briefly.
        fd = self.link.fileno()
        if fd != self._polled_fd:
            if self._polled_fd is not None:
                self._poller.unregister(self._polled_fd)
            if fd is not None and fd >= 0:
                self._poller.register(fd, zmq.POLLIN)
            self._polled_fd = fd if fd is not None and fd >= 0 else None
        self._waiter.wait(self._poller.poll, 5 if self._polled_fd is not None else 1)
        msg = self.requests.recv(0)
        while msg is not None:
            if isinstance(msg, RewardRequest):
                # a manual reward relayed by the decoder carries the operator's override and who asked
                override = msg.override is True
                issued_by = msg.issued_by
                if override:
                    self.events.write("operator_override", command="reward_request", request_id=msg.request_id,
                                      issued_by=issued_by)
                self.controller.request(msg.request_id, msg.volume_ul, msg.source,
                                        {"frame": msg.frame, "t_ready": msg.t_ready, "t_requested": msg.t_requested},
                                        override=override, issued_by=issued_by)
            else:
                self._waiter.arrived()
            msg = self.requests.recv(0)
        self._report_bus_trouble()
        for event in self.controller.poll(0.0):
            self._publish_event(event)

    def _report_bus_trouble(self) -> None:
        """Reward requests lost or garbled on the bus are reported, never silent (the decoder made them)."""
        lost = self.requests.gaps.gaps
        if lost > self._lost_reported:
            self.warn("reward_requests_lost", f"{lost - self._lost_reported} message(s) from the decoder lost on "
                      "the bus (sequence gap): a reward request may be among them")
            self._lost_reported = lost
        bad = self.requests.bad_messages
        if bad > self._bad_reported:
            self.warn("bad_bus_message", f"{bad - self._bad_reported} undecodable message(s) from the decoder: "
                      f"{self.requests.last_error}")
            self._bad_reported = bad

    def _publish_event(self, event) -> None:  # noqa: ANN001 - controller event union
        kind = event.kind
        if kind == "outcome":
            if event.status == "delivered":
                self.delivered += 1
            else:
                self.failed += 1
            meta = event.meta
            fields = {
                "request_id": event.request_id, "status": event.status, "reason": event.reason,
                "volume_ul": event.volume_ul, "open_ms": event.open_ms, "source": event.source,
                "frame": meta.get("frame", -1), "t_ready": meta.get("t_ready", 0),
                "t_requested": meta.get("t_requested", 0), "t_written": event.t_written, "t_ack": event.t_ack,
                "t_done": event.t_done, "board_us_ack": event.board_us_ack, "board_us_done": event.board_us_done,
            }
            # What the valve dispensed, by kind, and how it is known: in the session record (the bus message
            # keeps the schema's fields).
            budget = self.controller.budget
            accounting = {
                "dispensed_ul": event.dispensed_ul, "volume_kind": event.volume_kind,
                "session_reward_ul": budget.reward_ul, "session_other_ul": budget.other_ul,
                "reconciled": event.reconciled, "override": event.override, "issued_by": event.issued_by,
                "open_us": event.open_us, "seq": event.seq, "attempts": event.attempts, "board_nak": event.board_nak,
            }
            self.events.write("reward_outcome", **fields, **accounting)
            self.publish(RewardOutcome(**fields))
            if event.status != "delivered":
                self.warn("reward_" + event.status, f"reward {event.request_id} {event.status}: {event.reason}")
        elif kind == "lick":
            # t_board_ns: the board's time on the host clock (0 until synchronised); t_received: host read time
            self.events.write("lick", onset=event.onset, board_us=event.board_us, t_board_ns=event.t_ns,
                              t_received=event.t_received)
            self.publish(Lick(onset=event.onset, board_us=event.board_us, t_ns=event.t_ns,
                              t_received=event.t_received))
        elif kind == "notice":
            self.warn(event.code, event.message)
        elif kind == "link":
            self.events.write("link", state=event.state, detail=event.detail)
            self.publish(LinkState(state=event.state, detail=event.detail, t_ns=now_ns()))
            if event.state in ("lost", "watchdog_tripped"):
                self.warn("serial_" + event.state, f"reward board link {event.state}: {event.detail}")

    def on_control(self, msg: Control) -> None:
        if msg.command == "test_pulse":
            override = self._override(msg)
            self.controller.test_pulse(request_id=f"test-{msg.seq}", override=override, issued_by=msg.issued_by)
        elif msg.command == "flush":
            override = self._override(msg)
            ms = msg.args.get("ms")
            if not (isinstance(ms, int | float) and not isinstance(ms, bool) and math.isfinite(ms)):
                self.warn("bad_flush", f"flush from {msg.issued_by} not done: args.ms must be the open time in ms, "
                          f"got {ms!r}")
                return
            self.controller.pulse(f"flush-{msg.seq}", float(ms), SOURCE_FLUSH, override=override,
                                  issued_by=msg.issued_by)
        elif msg.command == "close_valve":
            sent = self.controller.close_valve()
            if not sent:
                self.warn("close_not_sent", "CLOSE could not be sent (serial link down): the board's watchdog "
                          f"closes the valve within {self.config.reward.watchdog_ms} ms")

    def _override(self, msg: Control) -> bool:
        """Whether an operator command overrides the valve budget (``override: true`` only); logged with who."""
        value: Any = msg.args.get("override", False)
        if value is not True and value is not False:
            self.warn("bad_override", f"{msg.command} from {msg.issued_by}: override must be true or false, got "
                      f"{value!r}: not applied")
            return False
        if value:
            self.events.write("operator_override", command=msg.command, args=msg.args, issued_by=msg.issued_by,
                              control_seq=msg.seq)
        return value

    def on_safe_state(self, reason: str) -> None:
        if self.controller.enter_safe_state(reason):
            self.warn("safe_state", f"rewards refused, valve closed: {reason}")
        else:
            self.warn("safe_state", f"rewards refused; CLOSE not sent (board link down), the board's watchdog "
                      f"closes the valve within {self.config.reward.watchdog_ms} ms: {reason}")

    def heartbeat_stats(self) -> dict[str, float]:
        return {"delivered": float(self.delivered), "failed": float(self.failed),
                "requests_lost": float(self.requests.gaps.gaps), "bad_messages": float(self.requests.bad_messages),
                "reward_ul": self.controller.budget.reward_ul, "other_ul": self.controller.budget.other_ul}

    def on_stop(self) -> None:
        controller = getattr(self, "controller", None)
        if controller is not None:
            for event in controller.shutdown(timeout_s=1.0):
                self._publish_event(event)
        link = getattr(self, "link", None)
        if link is not None:
            link.close()
        timer_period = getattr(self, "_timer_period", None)
        if timer_period is not None:
            timer_period.close()


class EmulatorProcess(RigProcess):
    """Runs :func:`reward.emulator.run_emulator` (the simulated board) as a supervised process.

    It is a separate process on purpose: if the reward process dies, the emulated firmware's
    watchdog must close the valve on its own, exactly as the real board would.
    """

    def configure(self) -> None:
        from reward.emulator import run_emulator  # noqa: PLC0415

        self._stop_event = threading.Event()
        self._url: list[str] = []
        self._ready = threading.Event()
        self._error: list[BaseException] = []

        def on_ready(url: str) -> None:
            self._url.append(url)
            self._ready.set()

        def serve() -> None:
            try:
                run_emulator(self.config.reward.emulator_transport, on_ready, self._stop_event,
                             log_path=self.dir / "valve.jsonl", cfg=self.config.reward)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which fails the process
                self._error.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=serve, name="emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the valve emulator did not come up within 10 s")
        self._raise_thread_error()

    def _raise_thread_error(self) -> None:
        if self._error:
            raise RuntimeError(f"valve emulator failed: {self._error[0]!r}") from self._error[0]

    def ready_info(self) -> dict[str, str]:
        return {"serial_url": self._url[0]}

    def step(self) -> None:
        self.wait_for_control(20)
        self._raise_thread_error()
        if not self._thread.is_alive():
            raise RuntimeError("the valve emulator thread stopped")

    def on_stop(self) -> None:
        if hasattr(self, "_stop_event"):
            self._stop_event.set()
            self._thread.join(5)
