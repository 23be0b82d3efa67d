"""Shadowsocks AEAD wire format (SIP004 framing, SIP007 salts and subkeys), sans I/O.

A TCP stream is ``salt`` then chunks ``seal(len 2B) seal(payload)``; a UDP packet is
``salt seal(payload)`` with a zero nonce. Inside the tunnel, the first bytes are a
SOCKS5-style address (``gproxy.codec.socks5.parse_address`` / ``encode_address``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gproxy.core.errors import ClientProtocolError, ConfigError, Outcome

Buffer = bytes | bytearray | memoryview
Aead = AESGCM | ChaCha20Poly1305
K = TypeVar("K")

TAG_SIZE = 16
NONCE_SIZE = 12
#: the largest payload in one TCP chunk (the length's top two bits are reserved)
MAX_PAYLOAD = 0x3FFF
#: an encrypted length field: 2 bytes and a tag
LENGTH_CHUNK_SIZE = 2 + TAG_SIZE
SUBKEY_INFO = b"ss-subkey"
_ZERO_NONCE = bytes(NONCE_SIZE)


class ShadowsocksError(ClientProtocolError):
    """The peer's bytes do not open with the key, or break the framing."""

    reason = Outcome.SS_PROTOCOL


@dataclass(frozen=True, slots=True)
class Method:
    """One AEAD cipher: its name, key and salt sizes, and how to build it from a subkey."""

    name: str
    key_size: int
    salt_size: int
    aead: Callable[[bytes], Aead]

    @property
    def tcp_header_size(self) -> int:
        """Bytes a TCP stream must deliver before its key can be checked (salt and first length)."""
        return self.salt_size + LENGTH_CHUNK_SIZE


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("chacha20-ietf-poly1305", 32, 32, ChaCha20Poly1305),
        Method("aes-256-gcm", 32, 32, AESGCM),
        Method("aes-128-gcm", 16, 16, AESGCM),
    )
}
DEFAULT_METHOD = "chacha20-ietf-poly1305"


def method_by_name(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown Shadowsocks method {name!r} (use one of: {', '.join(METHODS)})") from None


def derive_key(password: str | bytes, method: Method) -> bytes:
    """The master key from a password: OpenSSL's ``EVP_BytesToKey`` with MD5, as shadowsocks-libev does."""
    secret = password.encode("utf-8") if isinstance(password, str) else password
    key = b""
    block = b""
    while len(key) < method.key_size:
        block = hashlib.md5(block + secret, usedforsecurity=False).digest()
        key += block
    return key[: method.key_size]


def session_aead(key: bytes, salt: Buffer, method: Method) -> Aead:
    """The AEAD for one direction: keyed with ``HKDF-SHA1(key, salt, "ss-subkey")``."""
    hkdf = HKDF(algorithm=hashes.SHA1(), length=method.key_size, salt=bytes(salt), info=SUBKEY_INFO)
    return method.aead(hkdf.derive(key))


def _check_key(key: bytes, method: Method) -> None:
    if len(key) != method.key_size:
        raise ValueError(f"{method.name} needs a {method.key_size}-byte key, not {len(key)}")


# -- TCP ----------------------------------------------------------------------------


class TcpEncryptor:
    """One direction of a TCP stream: plaintext in, salt and sealed chunks out."""

    __slots__ = ("_aead", "_counter", "_pending_salt", "salt")

    def __init__(self, key: bytes, method: Method, salt: bytes | None = None) -> None:
        _check_key(key, method)
        if salt is None:
            salt = os.urandom(method.salt_size)
        elif len(salt) != method.salt_size:
            raise ValueError(f"{method.name} needs a {method.salt_size}-byte salt, not {len(salt)}")
        self.salt = salt
        self._aead = session_aead(key, salt, method)
        self._counter = 0
        self._pending_salt = True

    def sealed_size(self, size: int) -> int:
        """Bytes ``encrypt_into`` writes for ``size`` bytes of plaintext (the salt included if still unsent)."""
        if not size:
            return 0
        chunks = -(-size // MAX_PAYLOAD)
        return size + chunks * (LENGTH_CHUNK_SIZE + TAG_SIZE) + (len(self.salt) if self._pending_salt else 0)

    def encrypt_into(self, data: Buffer, out: memoryview) -> int:
        """Seal ``data`` into ``out`` (at least ``sealed_size(len(data))`` bytes) in chunks of at most
        ``MAX_PAYLOAD``; the first non-empty output starts with the salt. Returns the bytes written."""
        size = len(data)
        if not size:
            return 0
        if len(out) < self.sealed_size(size):
            raise ValueError(f"{len(out)}-byte buffer is too small for {self.sealed_size(size)} sealed bytes")
        seal = self._aead.encrypt_into
        n = self._counter
        pos = 0
        if self._pending_salt:
            pos = len(self.salt)
            out[:pos] = self.salt
            self._pending_salt = False
        view = memoryview(data) if size > MAX_PAYLOAD else data  # slices of bytes would copy
        for start in range(0, size, MAX_PAYLOAD):
            piece = view[start : start + MAX_PAYLOAD]
            payload_at = pos + LENGTH_CHUNK_SIZE
            seal(n.to_bytes(NONCE_SIZE, "little"), len(piece).to_bytes(2, "big"), None, out[pos:payload_at])
            pos = payload_at + len(piece) + TAG_SIZE
            seal((n + 1).to_bytes(NONCE_SIZE, "little"), piece, None, out[payload_at:pos])
            n += 2
        self._counter = n
        return pos

    def encrypt(self, data: Buffer) -> bytes:
        """``encrypt_into`` a new buffer: the salt (first time) and the sealed chunks of ``data``."""
        out = bytearray(self.sealed_size(len(data)))
        self.encrypt_into(data, memoryview(out))
        return bytes(out)


class TcpDecryptor:
    """The other direction: feed it ciphertext as it arrives, get back whatever plaintext it completes.

    ``needed`` says how many more bytes the next step waits for; ``salt`` is set once read
    (for replay checks). A bad tag or a reserved length bit raises :class:`ShadowsocksError`,
    after which the decryptor is unusable.
    """

    __slots__ = ("_aead", "_buf", "_counter", "_key", "_method", "_payload_size", "salt")

    def __init__(self, key: bytes, method: Method) -> None:
        _check_key(key, method)
        self._key = key
        self._method = method
        self._aead: Aead | None = None
        self._counter = 0
        self._buf = bytearray()
        self._payload_size = -1  # -1: a length chunk comes next
        self.salt: bytes | None = None

    @property
    def needed(self) -> int:
        """Bytes still missing before ``feed`` can return more plaintext (or finish the salt)."""
        if self._aead is None:
            want = self._method.salt_size
        elif self._payload_size < 0:
            want = LENGTH_CHUNK_SIZE
        else:
            want = self._payload_size + TAG_SIZE
        return want - len(self._buf)

    def feed(self, data: Buffer) -> bytes:
        """Take ``data``, return the plaintext of every chunk now complete (``b""`` if none)."""
        buf = self._buf
        buf += data
        out = bytearray(len(buf))  # plaintext is never longer than its ciphertext
        with memoryview(buf) as src, memoryview(out) as dst:
            used, written = self._open(src, dst)
        del buf[:used]
        del out[written:]
        return bytes(out)

    def take_buffered(self) -> bytes:
        """The ciphertext ``feed`` holds back (an incomplete step), handed over and forgotten."""
        held = bytes(self._buf)
        self._buf.clear()
        return held

    def open_into(self, src: Buffer, out: memoryview) -> tuple[int, int]:
        """Open the complete chunks at the start of ``src`` into ``out``, as many as fit; returns
        (ciphertext bytes used, plaintext bytes written). ``src`` continues the stream right after
        what was used before; nothing may be held back by ``feed`` (see ``take_buffered``).
        Neither the salt nor a length needs room in ``out``: only payloads do, whole."""
        if self._buf:
            raise ValueError("feed() holds ciphertext back: take_buffered() it first")
        return self._open(memoryview(src), out)

    def _open(self, src: memoryview, out: memoryview) -> tuple[int, int]:
        size = len(src)
        pos = written = 0
        if self._aead is None:
            salt_size = self._method.salt_size
            if size < salt_size:
                return 0, 0
            self.salt = bytes(src[:salt_size])
            self._aead = session_aead(self._key, self.salt, self._method)
            pos = salt_size
        aead = self._aead
        open_length, open_into = aead.decrypt, aead.decrypt_into
        room = len(out)
        n = self._counter
        payload_size = self._payload_size
        try:
            while True:
                if payload_size < 0:
                    end = pos + LENGTH_CHUNK_SIZE
                    if end > size:
                        break
                    length = open_length(n.to_bytes(NONCE_SIZE, "little"), src[pos:end], None)
                    n += 1
                    payload_size = (length[0] << 8) | length[1]
                    if payload_size > MAX_PAYLOAD:
                        raise ShadowsocksError(f"chunk length {payload_size:#06x} has reserved bits set")
                    pos = end
                end = pos + payload_size + TAG_SIZE
                stop = written + payload_size
                if end > size or stop > room:
                    break
                open_into(n.to_bytes(NONCE_SIZE, "little"), src[pos:end], None, out[written:stop])
                n += 1
                payload_size = -1
                pos = end
                written = stop
        except InvalidTag:
            raise ShadowsocksError("chunk failed authentication (wrong key or tampered data)") from None
        finally:
            self._counter = n
            self._payload_size = payload_size
        return pos, written


def try_keys(method: Method, keys: Iterable[tuple[K, bytes]], head: Buffer) -> K | None:
    """The id of the first key whose subkey opens the stream's first length chunk, or ``None``.

    ``head`` must hold at least ``method.tcp_header_size`` bytes (the outline-ss-server approach:
    salt plus one sealed length identify the user without reading the payload).
    """
    if len(head) < method.tcp_header_size:
        raise ValueError(f"need {method.tcp_header_size} bytes to identify the key, got {len(head)}")
    salt = bytes(head[: method.salt_size])
    first = bytes(head[method.salt_size : method.tcp_header_size])
    for ident, key in keys:
        try:
            session_aead(key, salt, method).decrypt(_ZERO_NONCE, first, None)
        except InvalidTag:
            continue
        return ident
    return None


# -- UDP ----------------------------------------------------------------------------


def encrypt_udp(key: bytes, method: Method, payload: Buffer, salt: bytes | None = None) -> bytes:
    """One UDP packet: ``salt seal(payload)``, nonce zero (payload = address header + data)."""
    _check_key(key, method)
    if salt is None:
        salt = os.urandom(method.salt_size)
    elif len(salt) != method.salt_size:
        raise ValueError(f"{method.name} needs a {method.salt_size}-byte salt, not {len(salt)}")
    return salt + session_aead(key, salt, method).encrypt(_ZERO_NONCE, payload, None)


def decrypt_udp(key: bytes, method: Method, packet: Buffer) -> bytes:
    """The plaintext of one UDP packet; :class:`ShadowsocksError` if short or not authentic."""
    _check_key(key, method)
    if len(packet) < method.salt_size + TAG_SIZE:
        raise ShadowsocksError(f"UDP packet of {len(packet)} bytes is shorter than salt and tag")
    view = memoryview(packet)
    try:
        return session_aead(key, view[: method.salt_size], method).decrypt(_ZERO_NONCE, view[method.salt_size :], None)
    except InvalidTag:
        raise ShadowsocksError("UDP packet failed authentication (wrong key or tampered data)") from None


def try_udp_keys(method: Method, keys: Iterable[tuple[K, bytes]], packet: Buffer) -> tuple[K, bytes] | None:
    """The id of the first key that opens ``packet`` and the plaintext, or ``None``."""
    for ident, key in keys:
        try:
            return ident, decrypt_udp(key, method, packet)
        except ShadowsocksError:
            continue
    return None
