"""SsSocket over socketpairs: reads in any split into any buffer size, the handshake's
held-back ciphertext, sealing (large writes, a slow reader), EOF and tampered chunks."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import gevent
import pytest

from gproxy.codec import shadowsocks as ss
from gproxy.core.ss_stream import SEAL_BUFFER, SsSocket, SsStreamError
from tests.helpers import wait_for

METHOD_NAMES = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the SsSocket's end, the peer's end); both closed afterwards."""
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def keyed(name: str) -> tuple[bytes, ss.Method]:
    method = ss.METHODS[name]
    return ss.derive_key("stream", method), method


def send_in_pieces(sock: socket.socket, data: bytes, seed: int) -> None:
    """Send ``data`` cut at random points, then EOF."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 17, 4096, 0x3FFF + 34, 70_000))
        sock.sendall(data[pos : pos + step])
        pos += step
        gevent.sleep(0)
    sock.shutdown(socket.SHUT_WR)


def read_all(stream: SsSocket, sizes: tuple[int, ...]) -> bytes:
    """recv_into with buffers of ``sizes`` in turn (and recv every fifth read) until EOF."""
    got = bytearray()
    for i in range(1_000_000):  # bounded: each read returns at least one byte until EOF
        size = sizes[i % len(sizes)]
        if i % 5 == 4:
            piece = stream.recv(size)
            if not piece:
                return bytes(got)
            got += piece
            continue
        buf = bytearray(size + 8)
        n = stream.recv_into(buf, size)
        if not n:
            return bytes(got)
        assert n <= size
        got += buf[:n]
    raise AssertionError("no EOF")


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("sizes", [(1 << 16,), (1, 7, 100), (ss.MAX_PAYLOAD - 1, ss.MAX_PAYLOAD, 1 << 16, 3)])
def test_reads_any_split_into_any_buffer(
    pair: tuple[socket.socket, socket.socket], name: str, sizes: tuple[int, ...]
) -> None:
    ours, peer = pair
    key, method = keyed(name)
    encryptor = ss.TcpEncryptor(key, method)
    plain = pattern(300_000)
    stream = b"".join(encryptor.encrypt(plain[i : i + n]) for i, n in ((0, 5), (5, 100_000), (100_005, 199_995)))
    sender = gevent.spawn(send_in_pieces, peer, stream, seed=len(sizes))
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
    assert read_all(wrapped, sizes) == plain
    sender.get(timeout=10)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_continues_after_what_the_handshake_fed(pair: tuple[socket.socket, socket.socket], name: str) -> None:
    """The front end feeds the first bytes; what the decryptor held back is not lost."""
    ours, peer = pair
    key, method = keyed(name)
    plain = b"head" + pattern(40_000)
    encryptor = ss.TcpEncryptor(key, method)
    stream = encryptor.encrypt(b"head") + encryptor.encrypt(pattern(40_000))
    first_chunk = method.salt_size + 18 + 4 + 16
    decryptor = ss.TcpDecryptor(key, method)
    assert decryptor.feed(stream[: first_chunk + 30]) == b"head"  # and 30 bytes of the next chunk held back
    peer.sendall(stream[first_chunk + 30 :])
    peer.shutdown(socket.SHUT_WR)
    wrapped = SsSocket(ours, decryptor, ss.TcpEncryptor(key, method))
    assert b"head" + read_all(wrapped, (1 << 16,)) == plain


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_sendall_seals_one_stream_salt_first(pair: tuple[socket.socket, socket.socket], name: str) -> None:
    ours, peer = pair
    key, method = keyed(name)
    encryptor = ss.TcpEncryptor(key, method)
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), encryptor)
    writes = [b"x", pattern(SEAL_BUFFER), b"", pattern(3 * SEAL_BUFFER + 1), pattern(ss.MAX_PAYLOAD)]

    def write() -> None:
        for data in writes:
            wrapped.sendall(data)
        ours.shutdown(socket.SHUT_WR)

    writer = gevent.spawn(write)
    received = bytearray()
    for _ in range(100_000):  # bounded
        piece = peer.recv(1 << 16)
        if not piece:
            break
        received += piece
    writer.get(timeout=10)
    assert received.startswith(encryptor.salt)
    assert ss.TcpDecryptor(key, method).feed(received) == b"".join(writes)


def test_sendall_waits_for_a_slow_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    """More than the socket buffers hold: the rest of a partial send goes out once the peer reads."""
    ours, peer = pair
    key, method = keyed("chacha20-ietf-poly1305")
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
    data = pattern(1 << 16)
    count = 200  # 13 MB: well past any default socketpair buffer
    writer = gevent.spawn(lambda: [wrapped.sendall(data) for _ in range(count)])
    gevent.idle()  # until the spawned greenlet blocks
    assert not writer.ready()  # blocked on the full socket, not failed
    decryptor = ss.TcpDecryptor(key, method)
    got = 0
    while got < count * len(data):
        piece = decryptor.feed(peer.recv(1 << 16))
        assert piece == (data * 2)[got % len(data) : got % len(data) + len(piece)]
        got += len(piece)
    writer.get(timeout=10)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_tampered_chunk_is_a_stream_error(pair: tuple[socket.socket, socket.socket], name: str) -> None:
    ours, peer = pair
    key, method = keyed(name)
    encryptor = ss.TcpEncryptor(key, method)
    good = encryptor.encrypt(b"fine")
    bad = bytearray(encryptor.encrypt(b"tampered"))
    bad[20] ^= 1  # inside the payload
    peer.sendall(good)
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
    buf = bytearray(1 << 16)
    assert buf[: wrapped.recv_into(buf)] == b"fine"
    peer.sendall(bad)
    with pytest.raises(SsStreamError, match="authentication"):
        wrapped.recv_into(buf)


def test_a_waiting_write_keeps_its_bytes_while_others_write() -> None:
    """The send buffer is shared by the thread's streams: a write left waiting on a full
    socket must not change when another stream seals into the buffer meanwhile."""
    key, method = keyed("aes-128-gcm")
    ours_a, peer_a = socket.socketpair()
    ours_b, peer_b = socket.socketpair()
    with ours_a, peer_a, ours_b, peer_b:
        slow = SsSocket(ours_a, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
        fast = SsSocket(ours_b, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
        data_a, data_b = pattern(SEAL_BUFFER), bytes(reversed(pattern(SEAL_BUFFER)))
        count = 100
        writer = gevent.spawn(lambda: [slow.sendall(data_a) for _ in range(count)])
        gevent.idle()  # until the spawned greenlet blocks
        assert not writer.ready()  # waiting, its rest copied out of the shared buffer
        drain = gevent.spawn(lambda: [peer_b.recv(1 << 20) for _ in range(count)])
        for _ in range(10):
            fast.sendall(data_b)
        decryptor = ss.TcpDecryptor(key, method)
        got = bytearray()
        while len(got) < count * len(data_a):
            got += decryptor.feed(peer_a.recv(1 << 16))
        assert got == data_a * count
        writer.get(timeout=10)
        drain.kill()


def test_a_waiting_stream_holds_no_read_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    """Waiting with no partial chunk, a stream gives its read buffer back to the hub's pool (and
    takes one again when data comes); with part of a chunk held it keeps it."""
    ours, peer = pair
    key, method = keyed("chacha20-ietf-poly1305")
    encryptor = ss.TcpEncryptor(key, method)
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
    buf = bytearray(1 << 16)
    reader = gevent.spawn(wrapped.recv_into, buf)
    gevent.idle()  # until the spawned greenlet blocks
    assert not reader.ready()
    assert wrapped._cipher is None  # waiting: nothing held
    peer.sendall(encryptor.encrypt(b"one"))
    assert buf[: reader.get(timeout=10)] == b"one"
    reader = gevent.spawn(wrapped.recv_into, buf)
    gevent.idle()  # until the spawned greenlet blocks
    assert wrapped._cipher is None
    sealed = encryptor.encrypt(b"two")
    peer.sendall(sealed[:5])  # part of the length chunk: held while it waits for the rest
    wait_for(lambda: wrapped._cipher is not None, timeout=5, what="the partial chunk read")
    assert not reader.ready()
    peer.sendall(sealed[5:])
    assert buf[: reader.get(timeout=10)] == b"two"
    reader = gevent.spawn(wrapped.recv_into, buf)
    gevent.idle()  # until the spawned greenlet blocks
    peer.shutdown(socket.SHUT_WR)  # EOF while waiting buffer-less
    assert reader.get(timeout=10) == 0


def test_a_waiting_read_keeps_the_socket_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    key, method = keyed("aes-128-gcm")
    ours.settimeout(0.1)
    wrapped = SsSocket(ours, ss.TcpDecryptor(key, method), ss.TcpEncryptor(key, method))
    with pytest.raises(TimeoutError):
        wrapped.recv_into(bytearray(1 << 16))
