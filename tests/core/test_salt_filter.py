"""SaltFilter: replays refused, bounded memory (two generations), one filter for several processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gproxy.core.salt_filter import SaltFilter
from tests.helpers import ROOT, gproxy_env

#: a process that maps the filter at descriptor argv[1], says ready, and adds salts(argv[2]) once
#: stdin says go
CHILD = """
import hashlib, sys
from gproxy.core.salt_filter import SaltFilter
salts = SaltFilter(int(sys.argv[1]))
count = int(sys.argv[2])
print("ready", flush=True)
sys.stdin.read(1)
print(sum(salts.add(hashlib.sha256(b"%d" % i).digest()) for i in range(count)), flush=True)
"""


def salts(count: int, start: int = 0) -> list[bytes]:
    return [hashlib.sha256(b"%d" % i).digest() for i in range(start, start + count)]


@pytest.fixture
def small() -> Iterator[SaltFilter]:
    """8 salts per generation."""
    made = SaltFilter.create(capacity_bits=3)
    yield made
    made.close()


@contextmanager
def child(made: SaltFilter, count: int) -> Iterator[subprocess.Popen[str]]:
    """A CHILD process that has mapped ``made`` (it said ready); killed at the end if it still runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(made.fd), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(made.fd,),
        env=gproxy_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_salt_is_accepted_once(small: SaltFilter) -> None:
    salt = os.urandom(32)
    assert small.add(salt)
    assert not small.add(salt)
    assert not small.add(memoryview(salt))
    assert small.add(os.urandom(32))
    assert small.add(salt[:16])  # a 16-byte salt (aes-128-gcm) is a salt of its own


def test_remembered_for_at_least_one_generation_and_at_most_two(small: SaltFilter) -> None:
    assert small.capacity == 8
    first, *rest = salts(1 + 2 * small.capacity)
    assert small.add(first)
    for salt in rest[: small.capacity - 1]:  # the first generation fills up
        assert small.add(salt)
    for salt in rest[small.capacity - 1 : 2 * small.capacity - 1]:  # the second one: first is still known
        assert not small.add(first)
        assert small.add(salt)
    assert small.add(rest[-1])  # a third generation starts: the first one is forgotten
    assert small.add(first)


def test_many_generations_stay_bounded_and_correct(small: SaltFilter) -> None:
    size = os.fstat(small.fd).st_size
    many = salts(50 * small.capacity)
    for at, salt in enumerate(many):
        assert small.add(salt), at
        assert not small.add(salt)
        assert not small.add(many[max(0, at - small.capacity)])  # the last `capacity` salts are known
    assert os.fstat(small.fd).st_size == size


def test_default_size() -> None:
    made = SaltFilter.create()
    try:
        assert made.capacity == 2**20  # as shadowsocks-libev's ppbloom: 1e6 per generation
        assert os.fstat(made.fd).st_size <= 17 * 2**20
        assert all(made.add(salt) for salt in salts(1000))
        assert not any(made.add(salt) for salt in salts(1000))
    finally:
        made.close()


def test_another_process_shares_the_filter(small: SaltFilter) -> None:
    seen = salts(3)
    for salt in seen:
        assert small.add(salt)
    with child(small, 5) as proc:  # salts 0..4: the child accepts 3 and 4 only
        out, _ = proc.communicate("go", timeout=30)
    assert out.strip() == "2"
    assert not small.add(salts(1, start=4)[0])  # and we see what the child added


def test_check_and_insert_is_atomic_across_processes() -> None:
    made = SaltFilter.create(capacity_bits=17)
    count = 20_000
    try:
        with child(made, count) as one, child(made, count) as two, child(made, count) as three:
            procs = [one, two, three]
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("g")
                proc.stdin.flush()
            accepted = [int(proc.communicate(timeout=60)[0]) for proc in procs]
        assert sum(accepted) == count, accepted  # every salt accepted by exactly one process
    finally:
        made.close()


def test_add_waits_for_the_lock_another_process_holds(small: SaltFilter) -> None:
    import fcntl

    with child(small, 1) as proc:  # it has mapped the filter
        fcntl.lockf(small.fd, fcntl.LOCK_EX)  # as another worker in the middle of an add
        try:
            assert proc.stdin is not None
            proc.stdin.write("g")
            proc.stdin.flush()
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(0.5)  # it waits for our lock (a coarse look: it would answer in ms)
        finally:
            fcntl.lockf(small.fd, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=30)
    assert out.strip() == "1"


def test_a_descriptor_without_a_filter_is_refused() -> None:
    fd = os.memfd_create("not-a-filter")
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="does not hold a salt filter"):
            SaltFilter(fd)
    finally:
        os.close(fd)
