"""``--ss ADDR``, TCP: Shadowsocks AEAD; the user is whoever's key opens the first chunk.

Straight-line handshake under --handshake-timeout: salt and first length (which key opens it), the
replay check, the address header; then the destination rules of that user, the dial and the relay
(Python touches every byte: decrypt up, encrypt down). A prober (no key opens it, a replayed salt,
a broken or short header) gets nothing: its bytes are read and discarded until it closes or the
handshake timeout passes (outcome ``ss_probe``).
"""

from __future__ import annotations

from typing import NoReturn

from gproxy.codec import socks5
from gproxy.codec.shadowsocks import Method, TcpDecryptor, TcpEncryptor, method_by_name, try_keys
from gproxy.core.addr import Address
from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.errors import ClientClosed, ClientProtocolError, HandshakeTimeout, Outcome
from gproxy.core.session import Session
from gproxy.core.ss_keys import keyring_for, salt_filter, users_generation
from gproxy.core.ss_stream import SsSocket
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, run_tunnel

#: the largest address header: ATYP, length, 255-byte name, port
MAX_HEADER = 1 + 1 + 255 + 2
#: bytes read per recv while discarding a prober's data
_DISCARD = 4096


class _Probe(Exception):
    """The first bytes do not make a Shadowsocks request we serve."""


def serve_ss(conn: Conn, ctx: Context, session: Session) -> None:
    """Serve one client of an --ss listener."""
    session.proto = "ss"
    session.cmd = "connect"
    method = method_by_name(ctx.config.ss_method)
    try:
        with handshake_deadline(ctx, session):
            key, dest, early = _handshake(conn, ctx, session, method)
    except (_Probe, ClientProtocolError, HandshakeTimeout) as exc:  # ShadowsocksError is a ClientProtocolError
        _discard(conn, ctx, session, str(exc) or type(exc).__name__)
    session.dest = str(dest)
    ctx.users.admit(session)  # UserLimit (max-conns): closed, as any refusal here
    upstream = open_upstream(ctx, dest, session.user)  # Denied / DialError: logged, client closed
    encryptor = TcpEncryptor(key.key, method)
    salt_filter().add(encryptor.salt)  # our own salts cannot be replayed at us either
    client = SsSocket(conn.sock, key.decryptor, encryptor)
    run_tunnel(Conn(client, early), upstream, ctx, session)  # type: ignore[arg-type]  # closes upstream


class _Opened:
    __slots__ = ("key", "decryptor")

    def __init__(self, key: bytes, decryptor: TcpDecryptor) -> None:
        self.key = key
        self.decryptor = decryptor


def _handshake(conn: Conn, ctx: Context, session: Session, method: Method) -> tuple[_Opened, Address, bytes]:
    """Find the user, check the salt, read the address header; returns the key, destination, early data."""
    head = conn.read_exact(method.tcp_header_size)
    ring = keyring_for(method)
    keys = ring.keys(ctx.config, users_generation(ctx.users))
    user = try_keys(method, keys, head)
    if user is None:
        raise _Probe("no key opens the first chunk")
    session.user = user
    ring.prefer(user)
    if not salt_filter().add(head[: method.salt_size]):
        raise _Probe("replayed salt")
    key = dict(keys)[user]
    decryptor = TcpDecryptor(key, method)
    plain = bytearray(decryptor.feed(head))
    while True:
        parsed = socks5.parse_address(plain, 0)
        if parsed is not None:
            dest, end = parsed
            return _Opened(key, decryptor), dest, bytes(plain[end:])
        if len(plain) >= MAX_HEADER:
            raise _Probe("address header too long")
        plain += decryptor.feed(conn.read_exact(decryptor.needed))


def _discard(conn: Conn, ctx: Context, session: Session, why: str) -> NoReturn:
    """Read and drop the client's bytes until it closes or the handshake timeout passes; raises."""
    conn.buf.clear()
    try:
        with handshake_deadline(ctx, session):
            while conn.sock.recv(_DISCARD):
                pass
    except (HandshakeTimeout, OSError):
        pass
    raise ClientClosed(f"probe or replay: {why}", reason=Outcome.SS_PROBE)
