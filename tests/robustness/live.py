"""Machinery for the live robustness suites: one table of listener kinds,
abusive clients, and leak meters (fds, greenlets, RSS).

Adding a listener kind to every live suite is one ``Probe`` entry in
``PROBES``: how to configure it, a valid pipelined handshake to a
destination, and what its server may answer.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool

from gproxy import Config, Proxy
from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address
from gproxy.core.context import Metrics
from gproxy.core.errors import ClientProtocolError, DialError
from gproxy.core.session import Session
from gproxy.server.session_greenlets import SessionGreenlets
from tests.helpers import ROOT, GproxyProcess, gproxy_env

USER, PASSWORD = b"u", b"p"
#: names the test resolver knows; everything else fails like NXDOMAIN
KNOWN_NAMES = {"echo.test": "127.0.0.1"}


# -- what each listener kind speaks ---------------------------------------------


def socks5_handshake(dest: Address, *, auth: bool = True) -> bytes:
    """Greeting, RFC 1929 auth and CONNECT in one segment (pipelined)."""
    no_auth = socks5.encode_greeting([0])
    hello = socks5.encode_greeting([2]) + socks5.encode_auth(USER, PASSWORD) if auth else no_auth
    return hello + socks5.encode_request(1, dest)


def socks5_transcript(data: bytes) -> str:
    """Classify what a SOCKS5 server sent: "accepted" (a success reply),
    "refused" (a well-formed refusal, or a prefix of one), or "nothing".
    Raises AssertionError for bytes no SOCKS5 server may send."""
    if not data:
        return "nothing"
    buf = bytearray(data)
    choice = socks5.parse_method_choice(buf)
    if choice is None:
        return "refused"  # a prefix of a method choice: cut by a reset
    method, used = choice
    del buf[:used]
    assert method in (0x00, 0x02, 0xFF), f"method {method:#x} in {data!r}"
    if method == 0xFF:
        assert not buf, f"bytes after 05 FF: {data!r}"
        return "refused"
    if method == 0x02:
        if len(buf) < 2:
            return "refused"
        assert buf[0] == 1 and buf[1] in (0, 1), f"bad auth reply in {data!r}"
        if buf[1] == 1:
            assert len(buf) == 2, f"bytes after a failed auth: {data!r}"
            return "refused"
        del buf[:2]
    try:
        reply = socks5.parse_reply(buf)
    except ClientProtocolError as exc:
        raise AssertionError(f"bad reply in {data!r}: {exc}") from None
    if reply is None:
        return "refused"
    assert reply[0].code in set(ReplyCode), f"reply code {reply[0].code} in {data!r}"
    if reply[0].code == 0:
        return "accepted"
    assert reply[1] == len(buf), f"bytes after an error reply: {data!r}"
    return "refused"


def http_handshake(dest: Address, *, auth: bool = True) -> bytes:
    import base64

    creds = base64.b64encode(USER + b":" + PASSWORD)
    head = f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n".encode()
    if auth:
        head += b"Proxy-Authorization: Basic " + creds + b"\r\n"
    return head + b"\r\n"


def http_transcript(data: bytes) -> str:
    if not data:
        return "nothing"
    assert data.startswith(b"HTTP/1.") or b"HTTP/1.".startswith(data), f"not HTTP: {data[:80]!r}"
    status = data[9:12]
    if status == b"200":
        return "accepted"
    assert len(status) < 3 or status[:1] in (b"4", b"5"), f"status {status!r}"
    return "refused"


def socks4_handshake(dest: Address, *, auth: bool = True) -> bytes:
    from gproxy.codec import socks4

    return socks4.encode_request(1, dest, b"user")


def socks4_transcript(data: bytes) -> str:
    if not data:
        return "nothing"
    assert data[0] == 0, f"SOCKS4 reply version {data[0]:#x}: {data!r}"
    if len(data) < 2:
        return "refused"
    if data[1] == 0x5A and len(data) >= 8:
        return "accepted"
    assert data[1] in (0x5B, 0x5C, 0x5D) and len(data) <= 8, f"bad SOCKS4 refusal {data!r}"
    return "refused"


def socks_transcript(data: bytes) -> str:
    """A SOCKS port answers SOCKS5 or SOCKS4, as the client's first byte asked."""
    if data[:1] == b"\x00":
        return socks4_transcript(data)
    return socks5_transcript(data)


def mixed_transcript(data: bytes) -> str:
    """SOCKS5, SOCKS4 or HTTP, as the server's first byte says."""
    if data[:1] in (b"\x00", b"\x05"):
        return socks_transcript(data)
    return http_transcript(data)


def proxied_socks5_handshake(dest: Address, *, auth: bool = True) -> bytes:
    """A load balancer's PROXY v2 header, then the client's SOCKS5 handshake."""
    from gproxy.codec import proxy_protocol

    header = proxy_protocol.encode_v2(Address("127.0.0.2", 40000), Address("127.0.0.1", 1080))
    return header + socks5_handshake(dest, auth=auth)


def proxied_v1_seed(dest: Address) -> list[bytes]:
    return [b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 1080\r\n" + socks5_handshake(dest)]


def mixed_extra(dest: Address) -> list[bytes]:
    return [http_handshake(dest), socks4_handshake(dest)]


def forward_handshake(dest: Address, *, auth: bool = True) -> bytes:
    return b""  # a forwarder has no handshake: its target is fixed


def forward_transcript(data: bytes) -> str:
    return "accepted" if data else "nothing"


@dataclass(frozen=True)
class Probe:
    """A listener kind as the live suites see it."""

    kind: str  # as in server.HANDLERS and "gproxy: listening KIND"
    option: str  # the Config.build / flag key that creates it
    handshake: Callable[..., bytes]  # (dest, auth=True) -> valid pipelined handshake
    transcript: Callable[[bytes], str]  # server bytes -> "accepted" / "refused" / "nothing"
    auth: bool = True  # started with --user
    #: the listener relays to a fixed target (``ADDR=HOST:PORT``), no handshake to fuzz
    fixed_target: bool = False
    #: more valid starts for mutation (other protocols a port speaks), given the destination
    extra: Callable[[Address], list[bytes]] | None = None
    label: str = ""  # the test id, when two probes share a kind
    more_settings: tuple[tuple[str, Any], ...] = ()  # e.g. (("proxy_protocol", True),)

    @property
    def name(self) -> str:
        return self.label or self.kind

    def settings(self, dest: Address | None = None) -> dict[str, Any]:
        listen = "127.0.0.1:0"
        if self.fixed_target:
            assert dest is not None, f"{self.kind} listeners need their target"
            listen += f"={dest}"
        settings: dict[str, Any] = {self.option: [listen], **dict(self.more_settings)}
        if self.auth:
            settings["user"] = [f"{USER.decode()}:{PASSWORD.decode()}"]
        return settings

    def accepted(self, data: bytes) -> bool:
        """Whether the server took the request (a forwarder always does, even silently)."""
        return self.fixed_target or self.transcript(data) == "accepted"

    def refused(self, data: bytes) -> bool:
        """Whether the server refused; a forwarder can only close."""
        return self.transcript(data) == ("nothing" if self.fixed_target else "refused")


PROBES: tuple[Probe, ...] = (
    Probe("socks5", "socks", socks5_handshake, socks_transcript, extra=lambda d: [socks4_handshake(d)]),
    Probe("socks5", "socks", socks4_handshake, socks_transcript, auth=False, label="socks4"),
    Probe("http", "http", http_handshake, http_transcript),
    Probe("mixed", "mixed", socks5_handshake, mixed_transcript, extra=mixed_extra),
    Probe("forward", "forward", forward_handshake, forward_transcript, auth=False, fixed_target=True),
    Probe(
        "socks5",
        "socks",
        proxied_socks5_handshake,
        socks_transcript,
        extra=proxied_v1_seed,
        label="socks5+proxy-protocol",
        # behind a balancer the listener is exposed: loopback destinations must be opened
        more_settings=(("proxy_protocol", True), ("allow_dest", ["127.0.0.0/8"])),
    ),
)


def available_probes() -> list[Probe]:
    from gproxy.server.proxy import HANDLERS

    found = [probe for probe in PROBES if probe.kind in HANDLERS]
    if importlib.util.find_spec("gproxy.server.proxy_header") is None:
        found = [probe for probe in found if not dict(probe.more_settings).get("proxy_protocol")]
    return found


# -- a proxy that never leaves loopback ------------------------------------------------


def sandbox_resolver(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    """Knows only KNOWN_NAMES: fuzzed names never reach real DNS."""
    ip = KNOWN_NAMES.get(host)
    if ip is None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(socket.AF_INET, (ip, port))]


class _LoopbackOnly:
    """Wraps a dialer: fuzzed destinations outside loopback are refused as unreachable."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def dial(self, dest: Address, timeout: float, **options: Any) -> socket.socket:
        if dest.ip is not None and not dest.ip.is_loopback:
            raise DialError(f"{dest}: outside the test's loopback", ReplyCode.NETWORK_UNREACHABLE)
        return self.inner.dial(dest, timeout, **options)  # type: ignore[no-any-return]


class SandboxProxy(Proxy):
    """An in-process Proxy whose outbound connections stay on loopback."""

    def context(self, spec: Any, own: Any = None) -> Any:
        ctx = super().context(spec, own)
        ctx.dialer = _LoopbackOnly(ctx.dialer)
        return ctx


def sandbox_proxy(*, resolver: Any = sandbox_resolver, metrics: Any = None, **settings: Any) -> Proxy:
    settings.setdefault("handshake_timeout", 1)
    settings.setdefault("connect_timeout", 2)
    return SandboxProxy(Config.build(**settings), resolver=resolver, metrics=metrics).start()


class SessionLog(Metrics):
    """Metrics that keep every finished session, and wake waiters."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.changed = Event()

    def session_closed(self, session: Session) -> None:
        self.sessions.append(session)
        self.changed.set()

    def wait_for(self, count: int, within: float = 15.0) -> list[Session]:
        """Block until ``count`` sessions have finished (bounded)."""
        deadline = time.monotonic() + within
        while len(self.sessions) < count and time.monotonic() < deadline:
            self.changed.clear()
            self.changed.wait(max(0.01, deadline - time.monotonic()))
        assert len(self.sessions) >= count, f"{len(self.sessions)} of {count} sessions finished"
        return self.sessions


def socks5_reply_code(data: bytes) -> int | None:
    """The REP byte of the SOCKS5 reply in a server transcript (auth or not)."""
    buf = bytearray(data)
    choice = socks5.parse_method_choice(buf)
    if choice is None:
        return None
    del buf[:2]
    if choice[0] == 2:
        del buf[:2]
    reply = socks5.parse_reply(buf)
    return None if reply is None else reply[0].code


# -- destinations that misbehave -------------------------------------------------------


class Destination:
    """A TCP server on 127.0.0.1 whose per-connection behaviour is a function."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        from gevent.server import StreamServer

        self.behave = behave
        self.connections = 0
        self.open = 0
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def _handle(self, sock: socket.socket, _peer: object) -> None:
        self.connections += 1
        self.open += 1
        try:
            self.behave(sock)
        except OSError:
            pass
        finally:
            self.open -= 1
            sock.close()

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", int(self.server.address[1]))

    def __enter__(self) -> Destination:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)


def reset_after(nbytes: int) -> Callable[[socket.socket], None]:
    """Read ``nbytes`` (or to EOF), then close with a RST."""

    def behave(sock: socket.socket) -> None:
        got = 0
        while got < nbytes:
            data = sock.recv(65536)
            if not data:
                break
            got += len(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return behave


def silent(sock: socket.socket) -> None:
    """Accept and never answer nor read; hold until the peer goes away."""
    sock.settimeout(60)
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def sink(sock: socket.socket) -> None:
    """Read and discard until EOF or error."""
    sock.settimeout(60)
    while sock.recv(1 << 20):
        pass


def firehose(sock: socket.socket) -> None:
    """Send forever (until the peer goes away); counts on the socket's server."""
    chunk = b"x" * 65536
    sock.settimeout(120)
    while True:
        sock.sendall(chunk)


# -- abusive clients ------------------------------------------------------------------


@dataclass
class Attempt:
    """What one abusive client saw."""

    received: bytes
    ended: str  # "eof", "reset" or "hung"
    elapsed: float
    port: int = 0  # the client's local port


def attack(
    address: tuple[str, int],
    payload: bytes,
    *,
    chunk: int = 0,
    pause: float = 0.0,
    half_close: bool = False,
    wait: float = 10.0,
    stop_on: bytes | None = None,
) -> Attempt:
    """Connect, send ``payload`` (in ``chunk``-sized pieces ``pause`` apart),
    then read until the server closes, for at most ``wait`` seconds."""
    started = time.monotonic()
    received = bytearray()
    ended = "hung"
    sock = socket.create_connection(address, timeout=wait)
    port = sock.getsockname()[1]
    try:
        with gevent.Timeout(wait, False):
            try:
                step = chunk or len(payload) or 1
                for i in range(0, len(payload), step):
                    sock.sendall(payload[i : i + step])
                    if pause:
                        gevent.sleep(pause)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                while True:
                    data = sock.recv(65536)
                    if not data:
                        ended = "eof"
                        break
                    received += data
                    if stop_on is not None and stop_on in received:
                        ended = "eof"
                        break
            except OSError:
                ended = "reset"
    finally:
        sock.close()
    return Attempt(bytes(received), ended, time.monotonic() - started, port)


def garbage(probe: Probe, dest: Address, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``count`` malformed, truncated, oversized and random handshakes, labelled."""
    rng = random.Random(seed)
    valid = [probe.handshake(dest), probe.handshake(Address("echo.test", dest.port))]
    valid += probe.extra(dest) if probe.extra else []
    valid = [v for v in valid if v] or [b"GET / HTTP/1.0\r\n\r\n"]
    for i in range(count):
        base = bytearray(rng.choice(valid))
        category = ("random", "truncated", "mutated", "oversized", "first-byte", "spliced")[i % 6]
        if category == "random":
            data = rng.randbytes(rng.randint(0, 600))
        elif category == "truncated":
            data = bytes(base[: rng.randint(0, len(base) - 1)])
        elif category == "mutated":
            for _ in range(rng.randint(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        elif category == "oversized":
            cut = rng.randint(0, len(base))
            data = bytes(base[:cut]) + rng.choice([b"\xff", b"A", b"\x00", b"\r\n"]) * rng.choice([300, 5000, 70000])
        elif category == "first-byte":
            data = bytes([i // 6 % 256]) + rng.randbytes(rng.randint(0, 40))
        else:
            other = rng.choice(valid)
            data = bytes(base[: rng.randint(0, len(base))]) + other[rng.randint(0, len(other)) :]
        yield category, data


# -- leak meters ------------------------------------------------------------------------


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def greenlet_count() -> int:
    """Spawned greenlets that have not finished (sessions, relay pumps, servers'
    handlers), less those parked for the next session (SessionGreenlets keeps a
    bounded number); the resolver's thread-pool workers come and go on their own."""
    objects = gc.get_objects()
    running = sum(1 for obj in objects if isinstance(obj, gevent.Greenlet) and not obj.ready())
    return running - sum(obj.parked for obj in objects if isinstance(obj, SessionGreenlets))


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(measure: Callable[[], int], baseline: int, *, slack: int = 0, within: float = 15.0) -> int:
    """Poll ``measure`` until it is back to ``baseline + slack`` (bounded); returns the last value."""
    deadline = time.monotonic() + within
    value = measure()
    while value > baseline + slack and time.monotonic() < deadline:
        gc.collect()
        gevent.sleep(0.1)
        value = measure()
    return value


#: /proc/net/tcp state codes
TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN", "07": "CLOSE"}


def tcp_states(pid: int | str = "self") -> dict[str, int]:
    """How many of the process's TCP sockets are in each state (CLOSE_WAIT: a leak)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    counts: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    state = TCP_STATES.get(fields[3], fields[3])
                    counts[state] = counts.get(state, 0) + 1
    return counts


def steady(measure: Callable[[], int], *, within: float = 2.0) -> int:
    """``measure`` once two readings 50 ms apart agree (bounded): a baseline."""
    deadline = time.monotonic() + within
    value = measure()
    while time.monotonic() < deadline:
        gevent.sleep(0.05)
        again = measure()
        if again == value:
            break
        value = again
    return value


def run_all(jobs: list[Callable[[], Any]], concurrency: int = 100) -> list[Any]:
    pool = Pool(concurrency)
    greenlets = [pool.spawn(job) for job in jobs]
    pool.join(raise_error=True)
    return [g.value for g in greenlets]


@contextlib.contextmanager
def hub_errors() -> Iterator[list[str]]:
    """Collects what gevent would print as a greenlet traceback."""
    hub = gevent.get_hub()
    seen: list[str] = []
    original = hub.print_exception

    def record(context: Any, type_: Any, value: Any, tb: Any) -> None:
        seen.append(f"{type_.__name__}: {value}")
        original(context, type_, value, tb)

    hub.print_exception = record
    try:
        yield seen
    finally:
        del hub.print_exception


def good_session(address: tuple[str, int], probe: Probe, dest: Address, payload: bytes, wait: float = 20) -> None:
    """A well-behaved client: pipelined handshake and payload, half-close,
    and everything echoed back behind a success reply."""
    attempt = attack(address, probe.handshake(dest, auth=probe.auth) + payload, half_close=True, wait=wait)
    assert attempt.ended == "eof", attempt
    assert attempt.received.endswith(payload), attempt.received[-200:]
    assert probe.accepted(attempt.received[: len(attempt.received) - len(payload)]), attempt


class DrainedGproxy(GproxyProcess):
    """``python -m gproxy ARGS`` whose stderr is read all along (a full pipe would
    block it), optionally under a lowered RLIMIT_NOFILE (soft and hard, so gproxy
    cannot raise it back), optionally behind a command ``prefix`` (``ip netns exec NS``)."""

    def __init__(self, *args: str, limit: int | None = None, listeners: int = 1, prefix: tuple[str, ...] = ()) -> None:
        def lower() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "gproxy", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=gproxy_env(),
            cwd=ROOT,
            preexec_fn=lower,
        )
        self.listening = {}
        self.stderr_lines = []
        for _ in range(listeners):
            self.wait_listening(15)
        self.reader = gevent.spawn(self._drain_stderr)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode(errors="replace"))

    def close_pipes(self) -> None:
        """The reader first: closing the pipe under its pending read raises in both."""
        self.reader.join(5)  # EOF: the process has exited or been killed
        self.reader.kill()
        super().close_pipes()

    def stop_and_read(self) -> tuple[int, str]:
        """SIGTERM, wait, and everything gproxy wrote on stderr."""
        self.proc.terminate()
        code = self.proc.wait(30)
        self.reader.join(5)
        return code, "".join(self.stderr_lines)


def socks4_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("gproxy.frontends.socks4") is None


def without_known_gaps(stderr: str) -> str:
    """``stderr`` minus tracebacks for a front end not merged yet (first byte 0x04
    on a SOCKS port imports gproxy.frontends.socks4). Inert once that module exists."""
    if not socks4_missing():
        return stderr
    import re

    block = re.compile(
        r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*ModuleNotFoundError: No module named 'gproxy\.socks4'\n"
        r"(?:.*failed with ModuleNotFoundError\n)?"
    )
    return block.sub("", stderr)
