"""The host end of the serial link to the reward board: port, handshake, heartbeats, reconnection.

:class:`ValveLink` owns the pyserial port and everything that keeps the link alive: it opens the
port (any pyserial URL: a device, a pty path, ``socket://``), performs the HELLO handshake, sends a
heartbeat whenever nothing else was written for ``heartbeat_interval_s``, notices loss (serial
error, board silence, board reset, board watchdog) and reconnects. It never blocks longer than the
caller's poll timeout (except inside pyserial's own open/close, e.g. the socket backend's 0.3 s
close) and never raises for link trouble: trouble becomes :class:`LinkEvent` items.

Waiting for the board: a port with a file descriptor (POSIX serial devices, ``socket://``) is
select()ed directly. A port without one (Windows COM ports) is read by a reader thread
(:mod:`reward.serial_reader`), and the loop (or the reward process's zmq poller, via
:meth:`ValveLink.fileno`) waits on the socket it wakes. Timed reads are never used.

What it does not do is decide anything about rewards: :class:`reward.controller.RewardController`
sends the commands and reads the board's messages through :meth:`ValveLink.send` /
:meth:`ValveLink.poll`.
"""

from __future__ import annotations

import os
import secrets
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
import serial

from reward import protocol as p
from reward.config import RewardConfig
from reward.serial_reader import READER_TIMEOUT_S, PortReader, ThreadedReads
from rig.core.clock import now_ns

# Link states (``ValveLink.state``) and the LinkEvent states announcing transitions.
CLOSED = "closed"
CONNECTING = "connecting"  # port being opened / handshake in progress, first time
RECONNECTING = "reconnecting"  # same, after a loss
CONNECTED = "connected"
LOST = "lost"  # event only: the link went down (serial error, silence, board reset, NOLINK)
WATCHDOG_TRIPPED = "watchdog_tripped"  # event only: the board's heartbeat watchdog fired


class LinkEvent(msgspec.Struct, frozen=True):
    """A change of link state, with a human-readable reason, stamped with ``rig.core.clock.now_ns``."""

    kind: ClassVar[str] = "link"
    state: str
    detail: str
    t_ns: int


class Received(msgspec.Struct, frozen=True):
    """One line from the board and the host time right after the read that delivered it."""

    message: p.BoardMessage | p.LineError
    t_read: int


class LinkDown(RuntimeError):
    """A command could not be written because the link is not connected (or just broke)."""


class ProtocolMismatch(RuntimeError):
    """The board speaks another protocol version: a firmware/software mismatch, not a glitch."""


class ValveLink:
    """Serial link to the reward board. Drive it with :meth:`poll`; write with :meth:`send`.

    ``link_id`` (random unless given) goes in every HELLO: a board that still holds the pulse log of this id
    (it was not power-cycled and no other host linked meanwhile) says so, and :attr:`resumed` is True after
    the handshake; the reward controller then asks the log about a pulse whose completion it never read
    (:mod:`reward.reconcile`). A HELLO with another id clears the log, so a pulse of an earlier host (whose
    sequence numbers this link may reuse) is never taken for one of this link's.
    """

    def __init__(
        self,
        url: str,
        baud: int = 115200,
        *,
        watchdog_ms: int = 500,
        heartbeat_interval_s: float = 0.1,
        link_timeout_s: float = 1.0,
        handshake_timeout_s: float = 3.0,
        hello_retry_s: float = 0.5,
        reconnect_interval_s: float = 0.5,
        write_timeout_s: float = 0.1,
        clock: Callable[[], int] = now_ns,
        port_factory: Callable[..., serial.SerialBase] = serial.serial_for_url,
        select_fn: Callable[..., tuple[list, list, list]] = select.select,
        sleep_fn: Callable[[float], None] = time.sleep,
        link_id: int | None = None,
    ) -> None:
        if link_id is not None and not 1 <= link_id <= p.MAX_U32:
            raise ValueError(f"link_id must be in 1..{p.MAX_U32}, got {link_id}")
        if not p.WATCHDOG_MIN_MS <= watchdog_ms <= p.WATCHDOG_MAX_MS:
            raise ValueError(f"watchdog_ms must be in {p.WATCHDOG_MIN_MS}..{p.WATCHDOG_MAX_MS}, got {watchdog_ms}")
        if heartbeat_interval_s * 1000 > watchdog_ms / 2:
            raise ValueError("heartbeat_interval_s must be at most half the watchdog time")
        self.url = url
        self.baud = baud
        self.watchdog_ms = watchdog_ms
        self._clock = clock
        self._hb_ns = int(heartbeat_interval_s * 1e9)
        self._silence_ns = int(link_timeout_s * 1e9)
        self._handshake_ns = int(handshake_timeout_s * 1e9)
        self._hello_retry_ns = int(hello_retry_s * 1e9)
        self._reconnect_ns = int(reconnect_interval_s * 1e9)
        self._write_timeout_s = write_timeout_s
        self._port_factory = port_factory
        self._select = select_fn
        self._sleep = sleep_fn
        self._parser = p.BoardParser()
        self._ser: serial.SerialBase | None = None
        self._fileno: int | None = None
        self._reads = ThreadedReads(clock, select_fn)  # for a port without a descriptor
        self.state = CLOSED
        self.board: p.HelloInfo | None = None
        self.link_id = link_id if link_id is not None else 1 + secrets.randbelow(p.MAX_U32)
        self.resumed = False
        self.last_error = ""
        self._events: list[LinkEvent | Received] = []
        self._seq = 0
        self._hello_seq = -1
        self._handshake_started = 0
        self._hello_sent = 0
        self._next_open_ns = 0
        self._last_write_ns = 0
        self._last_rx_ns = 0
        self._hb_sent: dict[int, int] = {}
        self._sync: deque[tuple[int, int]] = deque(maxlen=32)  # (rtt_ns, offset_ns) from heartbeat acks
        self.connects = 0
        self.losses = 0
        self.last_rtt_ns = -1

    @classmethod
    def from_config(cls, cfg: RewardConfig, url: str, **kwargs: Any) -> ValveLink:
        """A link with the settings of ``[reward]``; ``kwargs`` are the injectables (clock, port factory, waits)."""
        return cls(
            url,
            cfg.baud,
            watchdog_ms=cfg.watchdog_ms,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            link_timeout_s=cfg.link_timeout_s,
            handshake_timeout_s=cfg.handshake_timeout_s,
            reconnect_interval_s=cfg.reconnect_interval_s,
            write_timeout_s=cfg.write_timeout_s,
            **kwargs,
        )

    # ------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    def open(self) -> None:
        """Start connecting; the port is opened and the handshake done by :meth:`poll`."""
        if self.state != CLOSED:
            raise RuntimeError(f"link to {self.url} is already open (state {self.state})")
        self.state = CONNECTING
        self._next_open_ns = self._clock()
        self._announce(CONNECTING, f"opening {self.url}")

    def close(self) -> None:
        """Close the valve if we can, then the port. The board's watchdog locks it out shortly after."""
        if self.state == CLOSED:
            return
        if self.state == CONNECTED:
            try:
                self.send(p.encode_close(self.next_seq()))
            except LinkDown as exc:
                self.last_error = f"final CLOSE not written: {exc}"
        try:
            self._close_port()
        finally:
            self.state = CLOSED
            self._announce(CLOSED, "closed by the host")
            self._reads.close()

    def next_seq(self) -> int:
        """A fresh sequence number (monotonic across reconnects, so a stale reply never matches)."""
        self._seq = self._seq + 1 if self._seq < p.MAX_U32 else 1
        return self._seq

    def send(self, line: bytes) -> int:
        """Write one encoded command; return ``now_ns()`` taken right after ``write()`` returned.

        Raises :class:`LinkDown` if the link is not connected or the write fails (the loss is also
        reported as a LinkEvent by the next poll).
        """
        if self.state != CONNECTED:
            raise LinkDown(f"reward board link is {self.state}" + (f": {self.last_error}" if self.last_error else ""))
        return self._write(line)

    def poll(self, timeout_s: float = 0.0) -> list[LinkEvent | Received]:
        """Service the link for up to ``timeout_s``; return as soon as anything happened."""
        deadline = self._clock() + int(max(0.0, timeout_s) * 1e9)
        while True:
            now = self._clock()
            self._maintain(now)
            if self._events:
                break
            wait_ns = min(deadline, self._next_timer_ns(now)) - now
            if self._ser is not None:
                self._read(max(0, wait_ns) / 1e9)
            elif wait_ns > 0:
                self._sleep(wait_ns / 1e9)  # port closed: nothing to wait on until the next reopen
            if self._events or self._clock() >= deadline:
                break
        out, self._events = self._events, []
        return out

    def fileno(self) -> int | None:
        """Readable when the board sent something; None while the port is closed.

        The port's own descriptor (POSIX ports, sockets) or, for a port without one (Windows COM
        ports), the reader thread's wake-up socket. It changes when the link reconnects.
        """
        return self._fileno

    def board_to_host_ns(self, board_us: int) -> int | None:
        """Host ``now_ns`` estimate of a board time, from the fastest recent heartbeat round trip."""
        if not self._sync:
            return None
        _, offset = min(self._sync)
        return board_us * 1000 + offset

    # ------------------------------------------------------------ internals

    def _announce(self, state: str, detail: str) -> None:
        self._events.append(LinkEvent(state, detail, self._clock()))

    def _next_timer_ns(self, now: int) -> int:
        if self._ser is None:
            return self._next_open_ns
        if self.state == CONNECTED:
            return min(self._last_write_ns + self._hb_ns, self._last_rx_ns + self._silence_ns)
        return min(self._hello_sent + self._hello_retry_ns, self._handshake_started + self._handshake_ns)

    def _maintain(self, now: int) -> None:
        if self.state == CLOSED:
            return
        if self._ser is None:
            if now >= self._next_open_ns:
                self._open_port(now)
            return
        if self.state == CONNECTED:
            if now - self._last_rx_ns >= self._silence_ns:
                self._read(0.0)  # after a stall of our own, the board's replies may be waiting unread
                if self._ser is None or self.state != CONNECTED:
                    return
            if now - self._last_rx_ns >= self._silence_ns:
                self._lose(LOST, f"board silent for {(now - self._last_rx_ns) / 1e9:.2f} s", reopen=True)
            elif now - self._last_write_ns >= self._hb_ns:
                seq = self.next_seq()
                try:
                    t = self._write(p.encode_heartbeat(seq))
                except LinkDown:
                    return  # _write already reported the loss
                self._hb_sent[seq] = t
                if len(self._hb_sent) > 16:
                    del self._hb_sent[min(self._hb_sent)]
            return
        # handshaking
        if now - self._handshake_started >= self._handshake_ns:
            self.last_error = f"no handshake reply from {self.url} within {self._handshake_ns / 1e9:.1f} s"
            self._close_port()
            self._next_open_ns = now + self._reconnect_ns
        elif now - self._hello_sent >= self._hello_retry_ns:
            self._send_hello()

    def _open_port(self, now: int) -> None:
        try:
            ser = self._port_factory(
                self.url, do_not_open=True, baudrate=self.baud, timeout=0, write_timeout=self._write_timeout_s
            )
            if os.name == "posix" and "://" not in self.url:
                ser.exclusive = True  # a second program on the same board would interleave commands
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            self.last_error = f"cannot open {self.url}: {exc}"
            self._next_open_ns = now + self._reconnect_ns
            return
        self._ser = ser
        try:
            self._fileno = ser.fileno()
        except (AttributeError, NotImplementedError, OSError):
            self._fileno = None  # e.g. Windows COM ports: a reader thread does blocking reads
        if self._fileno is None:
            try:
                ser.timeout = READER_TIMEOUT_S  # the only timeout change of this open port
            except (serial.SerialException, OSError, ValueError) as exc:
                self._close_port()
                self.last_error = f"cannot configure {self.url}: {exc}"
                self._next_open_ns = now + self._reconnect_ns
                return
            self._fileno = self._reads.start(ser, f"valve-reader {self.url}")
        self._parser.reset()
        self._handshake_started = now
        self._send_hello()

    def _send_hello(self) -> None:
        self._hello_seq = self.next_seq()
        # The leading newline ends any partial line the board holds, so the HELLO parses cleanly.
        try:
            self._hello_sent = self._write(b"\n" + p.encode_hello(self._hello_seq, self.watchdog_ms, self.link_id))
        except LinkDown:
            self._hello_sent = self._clock()

    def _write(self, data: bytes) -> int:
        ser = self._ser
        if ser is None:
            raise LinkDown(f"port {self.url} is not open")
        try:
            ser.write(data)
        except (serial.SerialException, OSError) as exc:
            self._lose(LOST, f"write to {self.url} failed: {exc}", reopen=True)
            raise LinkDown(f"write to {self.url} failed: {exc}") from exc
        t = self._clock()
        self._last_write_ns = t
        return t

    def _read(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for bytes from the board and handle whatever arrived."""
        if self._reads.reader is not None:
            self._take_from_reader(self._reads.reader, wait_s)
            return
        ser = self._ser
        assert ser is not None and self._fileno is not None
        try:
            if wait_s > 0:
                ready, _, _ = self._select([self._fileno], [], [], wait_s)
                if not ready:
                    return
            data = ser.read(4096)  # timeout 0: what is there
        except (serial.SerialException, OSError) as exc:
            self._lose(LOST, f"read from {self.url} failed: {exc}", reopen=True)
            return
        if data:
            self._feed(data, self._clock())

    def _take_from_reader(self, reader: PortReader, wait_s: float) -> None:
        for item in self._reads.wait(reader, wait_s):
            if isinstance(item, BaseException):
                if isinstance(item, serial.SerialException | OSError):
                    self._lose(LOST, f"read from {self.url} failed: {item}", reopen=True)
                    return
                raise item  # a bug, not link trouble: never swallowed
            if self._reads.reader is not reader:
                return  # the port was closed meanwhile: what it still held is gone with it
            t_read, data = item
            if t_read <= self._last_write_ns:
                # Read while send() was still taking its after-write() stamp: stamp it now, so that a
                # reply never predates the write it answers (latencies and heartbeat RTTs stay positive).
                t_read = self._clock()
            self._feed(data, t_read)

    def _feed(self, data: bytes, t_read: int) -> None:
        self._last_rx_ns = t_read
        for item in self._parser.feed(data):
            self._handle(item, t_read)

    def _handle(self, item: p.BoardMessage | p.LineError, t_read: int) -> None:
        handshaking = self.state in (CONNECTING, RECONNECTING)
        if isinstance(item, p.Ack):
            if item.command == "HELLO" and item.seq == self._hello_seq and handshaking:
                self._linked(p.hello_info(item), t_read)
                return
            if item.command == "HB":
                t_sent = self._hb_sent.pop(item.seq, None)
                if t_sent is not None:
                    rtt = t_read - t_sent
                    self.last_rtt_ns = rtt
                    self._sync.append((rtt, (t_sent + t_read) // 2 - item.board_us * 1000))
                return
        elif isinstance(item, p.Nak):
            if item.seq == self._hello_seq:
                if item.code == p.NAK_VERSION:
                    raise ProtocolMismatch(
                        f"reward board at {self.url} speaks protocol {item.detail}, this host speaks "
                        f"{p.PROTOCOL_VERSION}: flash reward/firmware/bci_reward/bci_reward.ino"
                    )
                if item.code == p.NAK_ARGS:  # protocol 1 boards take two HELLO arguments, not three
                    raise ProtocolMismatch(
                        f"reward board at {self.url} refused the arguments of a protocol {p.PROTOCOL_VERSION} HELLO: "
                        "it runs older firmware; flash reward/firmware/bci_reward/bci_reward.ino"
                    )
                raise ValueError(f"reward board at {self.url} refused HELLO: {item.code} {item.detail}")
            if item.code == p.NAK_NOLINK and self.state == CONNECTED and item.seq > self._hello_seq:
                self._events.append(Received(item, t_read))
                self._lose(LOST, "board reports no link (NOLINK): re-handshaking", reopen=False)
                return
        elif isinstance(item, p.WatchdogTrip):
            if self.state == CONNECTED:
                self._lose(WATCHDOG_TRIPPED, f"board watchdog fired at board time {item.board_us} us", reopen=False)
            return
        elif isinstance(item, p.Boot):
            if item.protocol != p.PROTOCOL_VERSION:
                raise ProtocolMismatch(
                    f"reward board at {self.url} booted firmware {item.firmware} speaking protocol "
                    f"{item.protocol}; this host speaks {p.PROTOCOL_VERSION}"
                )
            if self.state == CONNECTED:
                self._lose(LOST, f"board reset (BOOT, firmware {item.firmware})", reopen=False)
            elif handshaking:
                self._send_hello()  # it just finished booting: no need to wait for the retry
            return
        self._events.append(Received(item, t_read))

    def _linked(self, info: p.HelloInfo, t: int) -> None:
        self.board = info
        self.resumed = info.resumed
        self.state = CONNECTED
        self.connects += 1
        self._last_rx_ns = t
        self._hb_sent.clear()
        self.last_error = ""
        self._announce(
            CONNECTED,
            f"{self.url}: firmware {info.firmware}, protocol {info.protocol}, max open {info.max_open_ms} ms, "
            f"duty limit {info.duty_max_ms} ms per {info.duty_window_ms} ms, watchdog {info.watchdog_ms} ms, "
            + ("pulse log resumed" if info.resumed else "new pulse log"),
        )

    def _lose(self, event_state: str, detail: str, *, reopen: bool) -> None:
        """Report a loss and start over: reopen the port, or just re-handshake on the open port."""
        if self.state == CLOSED:
            return
        was_connected = self.state == CONNECTED
        self.losses += was_connected
        self.last_error = detail
        now = self._clock()
        if was_connected:
            self._announce(event_state, detail)
        if reopen:
            self._close_port()
            self._next_open_ns = now + self._reconnect_ns
        if self.state != RECONNECTING:
            self.state = RECONNECTING
            self._announce(RECONNECTING, detail)
        if not reopen and self._ser is not None:
            self._handshake_started = now
            self._send_hello()

    def _close_port(self) -> None:
        """Stop the reader (if any) before closing the port under it; re-raise a bug it hit."""
        ser, self._ser, self._fileno = self._ser, None, None
        problem, bug = self._reads.stop()  # unread bytes go with the port
        if ser is None:
            return
        if problem:
            self.last_error = f"closing {self.url}: {problem}"
        try:
            ser.close()
        except (serial.SerialException, OSError) as exc:
            self.last_error = f"closing {self.url}: {exc}"
        if bug is not None:
            raise bug
