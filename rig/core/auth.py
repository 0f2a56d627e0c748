"""Who may talk to the rig: CURVE keys for the bus and the command socket, IP allow-lists for frame streams.

Without keys (the default) every socket binds on loopback and anything on this PC may connect, as before.
With ``[bus] keys_dir`` every socket the rig binds (the command ROUTER, every PUB) is a CURVE server holding
the rig's key pair, and a ZAP handler (:class:`ZapHandler`, one per ZeroMQ context, RFC 27) lets in only
clients whose public key is listed: the rig's own (its processes connect to each other with it) and the
consoles' in ``KEYS_DIR/allowed/``. The name of the file a key came from is the ZAP user id, so the command
server knows who sent a command from the key, not from what the message claims. Layout of a keys folder
(``rig keys init``/``add-console`` make it, :mod:`rig.app.keys_cli`)::

    KEYS_DIR/rig.key, rig.key_secret      the rig's pair (servers, and its processes as clients)
    KEYS_DIR/allowed/NAME.key             public keys of the consoles allowed in (delete one to revoke it)
    KEYS_DIR/consoles/NAME/               what console NAME needs: NAME.key(_secret) and rig.key

Key files are ZeroMQ certificates (``zmq.auth.load_certificate`` reads them). Part of the contract: the
process packages use these to bind and connect their sockets.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from rig.core.addresses import normalize_address

#: The name of the rig's own key pair; console names must differ from it.
RIG_KEY = "rig"
#: The ZAP domain of the rig's bus and command sockets.
BUS_DOMAIN = "rig"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"


class KeysProblem(ValueError):
    """A keys folder or key file that cannot be used (the message names the file and what to run)."""


def check_key_name(name: str) -> str:
    """``name`` if it can name a console key (it becomes the ``issued_by`` of that console's commands)."""
    if not _NAME_RE.fullmatch(name) or name == RIG_KEY:
        raise KeysProblem(f"key name {name!r}: must be 1-64 letters, digits, '_', '.' or '-', and not {RIG_KEY!r}")
    return name


@dataclass(frozen=True)
class CurveKeys:
    """One end's CURVE credentials on the rig's bus.

    ``name``/``public``/``secret``: this end's pair (the rig's for its processes, a console's for a console).
    ``server_public``: the rig's public key, held by every server socket of the rig. ``allowed``: for the rig,
    the client keys let in, public key -> name (a console has none: it serves nothing).
    """

    name: str
    public: bytes
    secret: bytes
    server_public: bytes
    allowed: Mapping[bytes, str] = field(default_factory=dict)

    def make_server(self, sock: zmq.Socket) -> None:
        """Before bind: a CURVE server whose clients the ZAP handler of its context checks."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, BUS_DOMAIN.encode())

    def make_client(self, sock: zmq.Socket) -> None:
        """Before connect: a CURVE client of the rig's servers, with this end's pair."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def _read_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysProblem(f"{path}: cannot read the key ({exc})") from exc
    if secret is None:
        raise KeysProblem(f"{path}: holds no secret key")
    if len(public) != 40 or len(secret) != 40 or zmq.curve_public(secret) != public:
        raise KeysProblem(f"{path}: not a valid CURVE key pair")
    return public, secret


def _read_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysProblem(f"{path}: cannot read the key ({exc})") from exc
    if len(public) != 40:
        raise KeysProblem(f"{path}: not a CURVE public key")
    return public


def load_rig_keys(keys_dir: str | Path) -> CurveKeys:
    """The rig's pair and the allowed client keys of ``keys_dir``; raises :class:`KeysProblem`."""
    folder = Path(keys_dir)
    secret_file = folder / f"{RIG_KEY}.key_secret"
    if not secret_file.is_file():
        raise KeysProblem(f"{secret_file} not found: make the rig's keys with `rig keys init {folder}`")
    public, secret = _read_pair(secret_file)
    allowed = {public: RIG_KEY}
    for path in sorted((folder / "allowed").glob("*.key")):
        allowed.setdefault(_read_public(path), check_key_name(path.stem))
    return CurveKeys(name=RIG_KEY, public=public, secret=secret, server_public=public, allowed=allowed)


def load_client_keys(folder: str | Path) -> CurveKeys:
    """A console's credentials: ``folder`` holds ``rig.key`` and one ``NAME.key_secret`` (what ``rig keys
    add-console`` made), or is the rig's own keys folder (then the console uses the rig's pair)."""
    path = Path(folder)
    if (path / f"{RIG_KEY}.key_secret").is_file():
        return load_rig_keys(path)
    server_file = path / f"{RIG_KEY}.key"
    if not server_file.is_file():
        raise KeysProblem(f"{server_file} not found: give the folder `rig keys add-console` made for this console")
    secrets = sorted(path.glob("*.key_secret"))
    if len(secrets) != 1:
        raise KeysProblem(f"{path}: expected one NAME.key_secret (this console's key), found {len(secrets)}")
    public, secret = _read_pair(secrets[0])
    name = check_key_name(secrets[0].name[: -len(".key_secret")])
    return CurveKeys(name=name, public=public, secret=secret, server_public=_read_public(server_file))


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new pair as ``folder/NAME.key`` (public) and ``NAME.key_secret`` (readable by the owner only)."""
    public, secret = zmq.curve_keypair()
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    write_public_key(public_file, public)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"#   bci-rig CURVE secret key {name!r}: never copy it off the machine it is for\nmetadata\n"
                f"    name = \"{name}\"\ncurve\n    public-key = \"{public.decode()}\"\n"
                f"    secret-key = \"{secret.decode()}\"\n")
    return public_file, secret_file


def write_public_key(path: Path, public: bytes) -> None:
    """A public key file (what ``allowed/`` holds and consoles get as ``rig.key``)."""
    path.write_text(f"#   bci-rig CURVE public key {path.stem!r}\nmetadata\ncurve\n"
                    f"    public-key = \"{public.decode()}\"\n", encoding="ascii")


@dataclass(frozen=True)
class ZapPolicy:
    """Who a ZAP domain lets in: CURVE clients whose key is in ``keys`` (key -> user id), and when
    ``addresses`` is not empty only peers at those IP addresses (a NULL socket is then checked on them alone)."""

    keys: Mapping[bytes, str] = field(default_factory=dict)
    addresses: frozenset[str] = frozenset()


class ZapHandler:
    """The ZAP handler (RFC 27) of one ZeroMQ context, answering in a background thread.

    Started before the context's server sockets bind; every handshake on a socket with a ZAP domain asks it.
    Refusals are counted per domain (:meth:`refusals`) for the owner to warn about from its own thread.
    Call :meth:`stop` before terminating the context.
    """

    def __init__(self, ctx: zmq.Context, policies: Mapping[str, ZapPolicy]) -> None:
        self._policies = dict(policies)
        self._lock = threading.Lock()
        self._refused: dict[str, int] = {}
        self._last_refused: dict[str, str] = {}
        self._reported: dict[str, int] = {}
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        try:
            self._zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._zap.close()
            raise OSError(f"cannot start the ZAP handler: {exc} (one per ZeroMQ context)") from exc
        self._pipe = ctx.socket(zmq.PAIR)
        self._pipe.setsockopt(zmq.LINGER, 0)
        pipe_endpoint = f"inproc://rig-zap-{id(self)}"
        self._pipe.bind(pipe_endpoint)
        thread_pipe = ctx.socket(zmq.PAIR)
        thread_pipe.setsockopt(zmq.LINGER, 0)
        thread_pipe.connect(pipe_endpoint)
        # The thread owns the ZAP socket and its pipe end from here on (handed over before it starts).
        self._thread = threading.Thread(target=self._serve, args=(thread_pipe,), name="zap", daemon=True)
        self._thread.start()

    def refusals(self, domain: str) -> tuple[int, str]:
        """(connections refused so far in ``domain``, why the last one was refused)."""
        with self._lock:
            return self._refused.get(domain, 0), self._last_refused.get(domain, "")

    def unreported_refusals(self, domain: str) -> tuple[int, str] | None:
        """(count, why of the last) when connections were refused in ``domain`` since the last call, else None:
        the owner warns from its own thread, once per batch."""
        count, why = self.refusals(domain)
        if count <= self._reported.get(domain, 0):
            return None
        self._reported[domain] = count
        return count, why

    def stop(self) -> None:
        if self._thread.is_alive():
            self._pipe.send(b"STOP")
            self._thread.join()
        self._pipe.close()

    def _serve(self, pipe: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if pipe in ready:
                    return
                if self._zap in ready:
                    self._zap.send_multipart(self._answer(self._zap.recv_multipart()))
        finally:
            pipe.close()
            self._zap.close()

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request: ``[version, id, status, text, user id, metadata]``."""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            return [_ZAP_VERSION, request[1] if len(request) > 1 else b"", b"400", b"bad ZAP request", b"", b""]
        _version, request_id, domain_b, address_b, _identity, mechanism, *credentials = request
        domain = domain_b.decode("utf-8", "replace")
        address = normalize_address(address_b.decode("utf-8", "replace"))
        user, why = self._check(domain, address, mechanism, credentials)
        if user is None:
            with self._lock:
                self._refused[domain] = self._refused.get(domain, 0) + 1
                self._last_refused[domain] = f"{why} (from {address})"
            return [_ZAP_VERSION, request_id, b"400", why.encode(), b"", b""]
        return [_ZAP_VERSION, request_id, b"200", b"OK", user.encode(), b""]

    def _check(self, domain: str, address: str, mechanism: bytes, credentials: list[bytes]) -> tuple[str | None, str]:
        """(user id, "") for a peer let in, (None, why) for one refused."""
        policy = self._policies.get(domain)
        if policy is None:
            return None, f"unknown ZAP domain {domain!r}"
        if policy.addresses and address not in policy.addresses:
            return None, "address not allowed"
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            name = policy.keys.get(z85.encode(credentials[0]))  # ZAP carries the raw 32 bytes; files hold Z85
            return (name, "") if name is not None else (None, "key not allowed")
        if mechanism == b"NULL" and policy.addresses and not policy.keys:
            return address, ""
        return None, f"mechanism {mechanism.decode('ascii', 'replace')} not accepted"
