"""TLS listeners (--https, --socks-tls) under junk: random bytes, truncated and
mutated ClientHellos, plaintext handshakes, silence. Each ends within the
handshake timeout without a traceback; real TLS clients are served after, and
fds and greenlets come back."""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import ssl

import pytest

from gproxy.core.addr import Address
from tests.helpers import make_cert
from tests.robustness.live import (
    attack,
    fd_count,
    greenlet_count,
    http_handshake,
    http_transcript,
    hub_errors,
    run_all,
    sandbox_proxy,
    settle,
    socks5_handshake,
    socks_transcript,
    steady,
)

HANDSHAKE_TIMEOUT = 0.5
COUNT = 300
#: kind -> (Config key, plaintext handshake, transcript of the plaintext answer)
TLS_KINDS = {
    "socks5-tls": ("socks_tls", socks5_handshake, socks_transcript),
    "https": ("https", http_handshake, http_transcript),
}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def client_hello() -> bytes:
    """A real ClientHello, as a TLS client's first flight."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def junk(plaintext: bytes, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    hello = client_hello()
    out = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 600)))
        elif kind == 1:
            out.append(hello[: rng.randint(0, len(hello) - 1)])
        elif kind == 2:
            mutated = bytearray(hello)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            out.append(bytes(mutated))
        elif kind == 3:
            out.append(plaintext)
        else:
            out.append(b"\x16\x03\x01\xff\xff" + rng.randbytes(rng.randint(0, 2000)))  # a huge record header
    return out


def tls_session(cert_file: str, address: tuple[str, int], kind: str, dest: Address) -> bytes:
    context = ssl.create_default_context(cafile=cert_file)
    with context.wrap_socket(socket.create_connection(address, timeout=10), server_hostname="localhost") as sock:
        sock.sendall(TLS_KINDS[kind][1](dest) + b"through TLS")
        data = b""
        while not data.endswith(b"through TLS"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("kind", sorted(TLS_KINDS))
def test_tls_listener_survives_junk(kind, cert, echo_tcp):
    key, plaintext_handshake, _ = TLS_KINDS[kind]
    dest = Address("127.0.0.1", echo_tcp.port)
    running = sandbox_proxy(
        **{key: ["127.0.0.1:0"]}, user=["u:p"], cert=cert[0], key=cert[1], handshake_timeout=HANDSHAKE_TIMEOUT
    )
    try:
        bound = running.address(kind)
        address = (bound.host, bound.port)
        assert tls_session(cert[0], address, kind, dest).endswith(b"through TLS")
        fds, greenlets = steady(fd_count), steady(greenlet_count)
        jobs = [
            functools.partial(attack, address, data, half_close=i % 3 == 0, wait=HANDSHAKE_TIMEOUT + 10)
            for i, data in enumerate(junk(plaintext_handshake(dest), COUNT, seed=7))
        ]
        with hub_errors() as tracebacks:
            attempts = run_all(jobs, concurrency=100)
        assert all(a.ended != "hung" for a in attempts)
        assert not any(a.received.startswith((b"\x05\x00", b"HTTP/1.1 200")) for a in attempts), "plaintext served"
        assert not tracebacks, tracebacks[:5]
        for _ in range(5):
            assert tls_session(cert[0], address, kind, dest).endswith(b"through TLS")
        assert settle(fd_count, fds) <= fds
        assert settle(greenlet_count, greenlets) <= greenlets
    finally:
        running.stop(0)
