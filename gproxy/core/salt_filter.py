"""Shadowsocks salts seen recently: one replay filter for every process of a gproxy (``--workers``).

The filter lives in a memfd, so workers (started by exec) share it through an inherited
descriptor. It holds two generations, each an open-addressed table (linear probing) of 4-byte
fingerprint tags, never more than half full. ``add`` looks a salt up in both and inserts it into
the current one under a POSIX record lock on the memfd (``fcntl.lockf``): such a lock belongs to a
process, so it excludes the other workers, and the kernel releases it if a worker dies holding it.
A filter no other process will hold skips the lock; threads of one process are not told apart
(gproxy calls ``add`` from its one hub thread).
Once the current generation holds ``capacity`` salts, the older one is emptied and becomes current:
a salt is remembered for at least ``capacity`` and at most ``2 * capacity`` later salts (as
shadowsocks-libev's ppbloom, which keeps two filters of 1e6). Fingerprints are keyed BLAKE2b with a
random key per filter, so no client can aim collisions; a new salt is taken for a replay with a
probability of about 1e-9 (a 32-bit tag compared with about two others).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile

#: salts per generation by default (two generations: 16 MiB of tables, shared by all workers)
CAPACITY_BITS = 20
_MAGIC = b"gpsalts1"
#: magic, fingerprint key, log2 of the slots per table, the current table (0 or 1), salts in it
_HEADER = struct.Struct("=8s16sIII")
_STATE_WORD = 7  # the header as 4-byte words: current table, then its count
_PAGE = mmap.PAGESIZE


def _table_bytes(slot_bits: int) -> int:
    """A table's size, whole pages (so emptying one can free its pages)."""
    return -(-(4 << slot_bits) // _PAGE) * _PAGE


def _new_file() -> int:
    """A descriptor of an anonymous file, closed on exec unless passed on explicitly."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("gproxy-ss-salts", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:  # unlinked already: gone once every descriptor is closed
        return os.dup(file.fileno())


class SaltFilter:
    """Salts seen recently, in memory shared with the other processes that hold ``fd``."""

    __slots__ = ("fd", "capacity", "shared", "_map", "_key", "_mask", "_table_words", "_slots", "_state")

    def __init__(self, fd: int, *, shared: bool = True) -> None:
        """Map the filter that ``create`` made in ``fd``; ``shared=False`` (no other process will
        ever hold ``fd``) skips the lock."""
        self.fd = fd
        self.shared = shared
        magic, key, slot_bits, _, _ = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if magic != _MAGIC:
            raise ValueError(f"descriptor {fd} does not hold a salt filter")
        self._key = key
        self._mask = (1 << slot_bits) - 1
        self.capacity = 1 << (slot_bits - 1)  # each table at most half full
        self._table_words = _table_bytes(slot_bits) // 4
        self._map = mmap.mmap(fd, _PAGE + 8 * self._table_words)  # MAP_SHARED
        self._state = memoryview(self._map)[:_PAGE].cast("I")
        self._slots = memoryview(self._map)[_PAGE:].cast("I")  # both tables, one tag (0: empty) a word

    @classmethod
    def create(cls, capacity_bits: int = CAPACITY_BITS, *, shared: bool = True) -> SaltFilter:
        """A new, empty filter of ``2 ** capacity_bits`` salts per generation, in a new memfd."""
        if capacity_bits < 1:
            raise ValueError("a salt filter holds at least two salts per generation")
        slot_bits = capacity_bits + 1
        fd = _new_file()
        try:
            os.ftruncate(fd, _PAGE + 2 * _table_bytes(slot_bits))  # reads as zeros: both tables empty
            os.pwrite(fd, _HEADER.pack(_MAGIC, os.urandom(16), slot_bits, 0, 0), 0)
            return cls(fd, shared=shared)
        except BaseException:
            os.close(fd)
            raise

    def add(self, salt: bytes | bytearray | memoryview) -> bool:
        """Remember ``salt``; False if it was seen already (by this process or another)."""
        digest = int.from_bytes(hashlib.blake2b(salt, digest_size=8, key=self._key).digest(), "little")
        if not self.shared:
            return self._add(digest)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            return self._add(digest)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _add(self, digest: int) -> bool:
        """Look up and insert, holding the lock; the low bits of ``digest`` say where, the high 32 what."""
        state, words = self._state, self._table_words
        home = digest & self._mask
        tag = digest >> 32 or 1
        current = state[_STATE_WORD]
        free = self._probe(words * current, home, tag)
        if free < 0 or self._probe(words * (1 - current), home, tag) < 0:
            return False
        count = state[_STATE_WORD + 1]
        if count >= self.capacity:  # the older generation is forgotten; the current one becomes it
            current = 1 - current
            count = 0
            self._clear(current)
            free = words * current + home
        self._slots[free] = tag
        state[_STATE_WORD] = current
        state[_STATE_WORD + 1] = count + 1
        return True

    def _probe(self, table: int, home: int, tag: int) -> int:
        """The index of the first empty slot from ``home`` on in the table at ``table``, or -1 if
        ``tag`` comes first. Never loops for ever: a table is at most half full."""
        slots, mask = self._slots, self._mask
        slot = home
        while found := slots[table + slot]:
            if found == tag:
                return -1
            slot = (slot + 1) & mask
        return table + slot

    def _clear(self, table: int) -> None:
        start, size = _PAGE + table * 4 * self._table_words, 4 * self._table_words
        try:
            self._map.madvise(mmap.MADV_REMOVE, start, size)  # frees the pages: they read as zeros
        except (AttributeError, OSError):  # not Linux, or not a memfd
            self._map[start : start + size] = bytes(size)

    def close(self) -> None:
        self._slots.release()
        self._state.release()
        self._map.close()
        os.close(self.fd)
