"""A connected socket seen through a Shadowsocks AEAD stream: ``recv_into`` gives plaintext, ``sendall`` seals.

Both ends use it: the --ss front end wraps its client, the ``ss://`` dialer its server. Being no plain
gevent socket, the relay takes its generic path (one greenlet per direction) for it.
"""

from __future__ import annotations

import socket

from gproxy.codec.shadowsocks import MAX_PAYLOAD, TAG_SIZE, ShadowsocksError, TcpDecryptor, TcpEncryptor

Buffer = bytes | bytearray | memoryview
#: ciphertext read per recv: four full chunks (length, payload and their tags)
CIPHER_READ = 4 * (MAX_PAYLOAD + 2 + 2 * TAG_SIZE)


class SsStreamError(ConnectionError):
    """The peer's stream failed authentication or broke the framing after the handshake."""


class SsSocket:
    """A socket-like object over ``sock`` that decrypts what it reads and encrypts what it sends."""

    __slots__ = ("sock", "decryptor", "encryptor", "_plain", "_pos", "_cipher")

    def __init__(self, sock: socket.socket, decryptor: TcpDecryptor, encryptor: TcpEncryptor, plain: bytes = b""):
        self.sock = sock
        self.decryptor = decryptor
        self.encryptor = encryptor
        self._plain = plain  # decrypted, not yet handed out
        self._pos = 0
        self._cipher = memoryview(bytearray(CIPHER_READ))

    # -- reading ------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read and decrypt until some plaintext is there; False at EOF."""
        cipher = self._cipher
        while True:
            n = self.sock.recv_into(cipher)
            if not n:
                return False
            try:
                plain = self.decryptor.feed(cipher[:n])
            except ShadowsocksError as exc:
                raise SsStreamError(str(exc)) from None
            if plain:
                self._plain = plain
                self._pos = 0
                return True

    def recv_into(self, buf: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        if self._pos >= len(self._plain) and not self._fill():
            return 0
        plain, pos = self._plain, self._pos
        size = min(nbytes or len(buf), len(plain) - pos)
        if pos == 0 and size == len(plain):
            buf[:size] = plain  # type: ignore[index]
            self._plain = b""
        else:
            buf[:size] = memoryview(plain)[pos : pos + size]  # type: ignore[index]
            self._pos = pos + size
        return size

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._pos >= len(self._plain) and not self._fill():
            return b""
        plain, pos = self._plain, self._pos
        if pos == 0 and len(plain) <= bufsize:
            self._plain = b""
            return plain
        self._pos = pos + bufsize
        return plain[pos : pos + bufsize]

    # -- writing ------------------------------------------------------------------------

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        sealed = self.encryptor.encrypt(data)
        if sealed:
            self.sock.sendall(sealed)

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
