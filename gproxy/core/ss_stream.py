"""A connected socket seen through a Shadowsocks AEAD stream: ``recv_into`` gives plaintext, ``sendall`` seals.

Both ends use it: the --ss front end wraps its client, the ``ss://`` dialer its server. Being no plain
gevent socket, the relay takes its generic path (one greenlet per direction) for it.
"""

from __future__ import annotations

import socket

from gproxy.codec.shadowsocks import MAX_PAYLOAD, METHODS, TAG_SIZE, ShadowsocksError, TcpDecryptor, TcpEncryptor
from gproxy.core._gevent import GeventInternalsMissing, raw_socket
from gproxy.core.per_hub import PerHub
from gproxy.core.stream import send_now

Buffer = bytes | bytearray | memoryview
#: a sealed chunk at its largest: length, payload and their tags
_CHUNK = 2 + MAX_PAYLOAD + 2 * TAG_SIZE
#: ciphertext read per recv (at least): eight full chunks, two fillings of the relay's 64 KiB buffer
CIPHER_READ = 8 * _CHUNK
#: a read buffer: CIPHER_READ after a partial chunk
_READ_BUFFER = CIPHER_READ + _CHUNK
#: free read buffers a hub keeps for its streams (a stream waiting for data holds none)
READ_POOL = 8
#: plaintext sealed in the hub's shared send buffer; larger writes get a buffer of their own
SEAL_BUFFER = 1 << 16
_SEALED_MAX = (
    SEAL_BUFFER + -(-SEAL_BUFFER // MAX_PAYLOAD) * (_CHUNK - MAX_PAYLOAD) + max(m.salt_size for m in METHODS.values())
)


#: where a waiting stream peeks its first byte (never read: any stream may share it)
_PEEK = bytearray(1)


class _HubBuffers:
    """What the streams of one hub (thread) share: the send buffer, filled and handed to the
    kernel with no yield between, and the pool of free read buffers."""

    __slots__ = ("send", "free_reads")

    def __init__(self) -> None:
        self.send = memoryview(bytearray(_SEALED_MAX))
        self.free_reads: list[memoryview] = []

    def take_read_buffer(self) -> memoryview:
        return self.free_reads.pop() if self.free_reads else memoryview(bytearray(_READ_BUFFER))

    def give_back(self, buf: memoryview) -> None:
        if len(self.free_reads) < READ_POOL:
            self.free_reads.append(buf)


_hub_buffers: PerHub[_HubBuffers] = PerHub(lambda hub: _HubBuffers())


class SsStreamError(ConnectionError):
    """The peer's stream failed authentication or broke the framing after the handshake."""


class SsSocket:
    """A socket-like object over ``sock`` that decrypts what it reads and encrypts what it sends.

    Reading: ciphertext is read into a buffer (``CIPHER_READ`` and a chunk) and its chunks are
    opened straight into the caller's buffer when it has room for a full chunk, else into a spare
    one handed out piecewise. A stream that waits for data with no partial chunk held gives its
    read buffer back to the hub's pool while it waits (idle tunnels hold none). Writing: sealed
    into the hub's buffer and sent on the kernel socket; only what it does not take at once is
    copied out and waits (gevent's ``sendall``).
    """

    __slots__ = ("sock", "_raw", "_hub", "decryptor", "encryptor", "_cipher", "_start", "_end", "_spare", "_plain")

    #: what one write should carry (the relay reads this much for it): whole chunks, where
    #: 64 KiB would end in a 4-byte fifth chunk (an AEAD call more on each side)
    write_size = 4 * MAX_PAYLOAD

    def __init__(self, sock: socket.socket, decryptor: TcpDecryptor, encryptor: TcpEncryptor):
        self.sock = sock
        try:  # the kernel socket: a read that need not wait skips gevent's Python layers
            self._raw: socket.socket | None = raw_socket(sock)
        except (TypeError, GeventInternalsMissing):
            self._raw = None
        self._hub = _hub_buffers.get()  # a socket stays in the hub (thread) that made it
        self.decryptor = decryptor
        self.encryptor = encryptor
        held = decryptor.take_buffered()  # what the handshake read past its last complete step
        self._cipher: memoryview | None = None
        if held:
            self._cipher = self._hub.take_read_buffer()
            self._cipher[: len(held)] = held
        self._start = 0  # ciphertext not yet opened: _cipher[_start:_end]
        self._end = len(held)
        self._spare: memoryview | None = None  # plaintext for callers with small buffers
        self._plain = memoryview(b"")  # opened, not yet handed out (a slice of _spare)

    # -- reading ------------------------------------------------------------------------

    def _open_into(self, out: memoryview) -> int:
        """Open ciphertext into ``out`` (room for a full chunk), reading when none is complete; 0 at EOF."""
        while True:
            cipher = self._cipher
            if self._end > self._start:
                try:
                    used, written = self.decryptor.open_into(cipher[self._start : self._end], out)  # type: ignore[index]
                except ShadowsocksError as exc:
                    raise SsStreamError(str(exc)) from None
                self._start += used
                if written:
                    return written
            if cipher is None:
                cipher = self._cipher = self._hub.take_read_buffer()
            if self._start == self._end:
                self._start = self._end = 0
            elif len(cipher) - self._end < CIPHER_READ:  # keep reads big: the partial chunk moves to the front
                held = self._end - self._start
                cipher[:held] = cipher[self._start : self._end]
                self._start, self._end = 0, held
            n = self._read(cipher)
            if n < 0:
                continue  # waited without the buffer: take one and read
            if not n:
                return 0
            self._end += n

    def _read(self, cipher: memoryview) -> int:
        """Read into ``cipher`` after ``_end``: bytes read, 0 at EOF, -1 once data came while the
        buffer was back in the pool (nothing held: the stream waited with a peek, buffer-less)."""
        space = cipher[self._end :]
        if self._raw is None:
            return self.sock.recv_into(space)
        try:
            return self._raw.recv_into(space)
        except BlockingIOError:
            pass
        if self._end:  # a partial chunk is held: wait in the buffer (gevent: under the socket's timeout)
            return self.sock.recv_into(space)
        self._cipher = None
        self._hub.give_back(cipher)
        return -1 if self.sock.recv_into(_PEEK, 1, socket.MSG_PEEK) else 0

    def _spare_plain(self) -> bool:
        """Open the next chunks into the spare buffer (``_plain``); False at EOF."""
        if self._spare is None:
            self._spare = memoryview(bytearray(MAX_PAYLOAD))
        n = self._open_into(self._spare)
        self._plain = self._spare[:n]
        return n > 0

    def recv_into(self, buf: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        out = memoryview(buf)
        if nbytes and nbytes < len(out):
            out = out[:nbytes]
        if not self._plain:
            if len(out) >= MAX_PAYLOAD:  # the relay's case: straight into its buffer
                return self._open_into(out)
            if not self._spare_plain():
                return 0
        plain = self._plain
        size = min(len(out), len(plain))
        out[:size] = plain[:size]
        self._plain = plain[size:]
        return size

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self._plain and not self._spare_plain():
            return b""
        plain = self._plain
        self._plain = plain[bufsize:]
        return bytes(plain[:bufsize])

    # -- writing ------------------------------------------------------------------------

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        size = self.encryptor.sealed_size(len(data))
        shared = size <= _SEALED_MAX
        out = self._hub.send if shared else memoryview(bytearray(size))
        n = self.encryptor.encrypt_into(data, out)
        sent = send_now(self.sock, out[:n]) if n else 0
        if sent == n:
            return
        rest = out[sent:n]
        # gevent's sendall waits for the peer to drain (under the socket's timeout); other
        # greenlets of this thread reuse the shared buffer meanwhile: the rest is copied out
        self.sock.sendall(rest.tobytes() if shared else rest)

    def send(self, data: Buffer, flags: int = 0) -> int:
        self.sendall(data)
        return len(data)

    # -- the socket underneath --------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> tuple[object, ...]:
        return self.sock.getsockname()  # type: ignore[no-any-return]

    def getpeername(self) -> tuple[object, ...]:
        return self.sock.getpeername()  # type: ignore[no-any-return]

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    @property
    def family(self) -> int:
        return self.sock.family
