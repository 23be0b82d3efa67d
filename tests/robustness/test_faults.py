"""Fault injection: the destination resets or goes silent, the client
vanishes, DNS fails. Each ends with the right reply or a clean close, the
session records why, and no fd or greenlet is left behind."""

from __future__ import annotations

import contextlib
import socket
import struct

import gevent
import pytest

from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address
from tests.helpers import EchoServer
from tests.robustness.live import (
    PROBES,
    Destination,
    SessionLog,
    attack,
    fd_count,
    firehose,
    good_session,
    greenlet_count,
    reset_after,
    sandbox_proxy,
    settle,
    silent,
    sink,
    socks5_reply_code,
    steady,
)

ROUNDS = 10
BROKEN = {"reset", "broken_pipe", "error"}


def _address(running, probe):  # type: ignore[no-untyped-def]
    bound = running.address(probe.kind)
    return bound.host, bound.port


def _baseline():  # type: ignore[no-untyped-def]
    """Warm up lazily created things (resolver pool, buffers) through a throwaway
    proxy, then read fds and greenlets."""
    with EchoServer() as echo:
        warm = sandbox_proxy(**PROBES[0].settings())
        try:
            for _ in range(2):
                good_session(_address(warm, PROBES[0]), PROBES[0], Address("127.0.0.1", echo.port), b"warm-up")
        finally:
            warm.stop(0)
    return steady(fd_count), steady(greenlet_count)


def _no_leaks(baseline: tuple[int, int]) -> None:
    fds, greenlets = baseline
    assert settle(fd_count, fds) <= fds
    assert settle(greenlet_count, greenlets) <= greenlets


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_destination_resets_mid_transfer(probe, sandbox):
    log = SessionLog()
    with Destination(reset_after(20_000)) as dest:
        running = sandbox(probe, dest.address, metrics=log, idle_timeout=30)
        baseline = _baseline()
        before = len(log.sessions)
        for _ in range(ROUNDS):
            attempt = attack(_address(running, probe), probe.handshake(dest.address) + b"y" * 200_000, wait=10)
            assert attempt.ended in ("eof", "reset"), attempt
            assert probe.accepted(attempt.received), attempt
        sessions = log.wait_for(before + ROUNDS)[before:]
        assert {s.outcome for s in sessions} <= BROKEN, [s.outcome for s in sessions]
        assert all(s.up >= 20_000 for s in sessions)
    _no_leaks(baseline)


def test_client_vanishes_mid_transfer(probe, sandbox):
    """The client RSTs while uploading and while downloading: the destination's
    connection is closed too, and the session ends."""
    for behaviour in (sink, firehose):
        log = SessionLog()
        with Destination(behaviour) as dest:
            running = sandbox(probe, dest.address, metrics=log, idle_timeout=30)
            baseline = _baseline()
            for _ in range(ROUNDS):
                sock = socket.create_connection(_address(running, probe), timeout=10)
                sock.sendall(probe.handshake(dest.address) + b"z" * 100_000)
                if not probe.fixed_target or behaviour is firehose:
                    assert sock.recv(65536)  # the reply (and maybe the firehose's first bytes)
                _rst_close(sock)
            log.wait_for(ROUNDS)
            assert settle(lambda d=dest: d.open, 0) == 0, "a destination connection outlived its client"
            outcomes = {s.outcome for s in log.sessions}
            assert outcomes <= BROKEN | {"ok"}, outcomes
            running.stop(0)
        _no_leaks(baseline)


def test_destination_accepts_but_never_answers(probe, sandbox):
    """The idle timeout closes the tunnel (both sides) and says so."""
    log = SessionLog()
    with Destination(silent) as dest:
        running = sandbox(probe, dest.address, metrics=log, idle_timeout=0.5)
        baseline = _baseline()
        before = len(log.sessions)
        attempts = [
            gevent.spawn(attack, _address(running, probe), probe.handshake(dest.address) + b"hello?", wait=15)
            for _ in range(ROUNDS)
        ]
        gevent.joinall(attempts, raise_error=True)
        for attempt in (g.value for g in attempts):
            assert attempt.ended == "eof", attempt
            assert probe.accepted(attempt.received), attempt
        sessions = log.wait_for(before + ROUNDS)[before:]
        assert {s.outcome for s in sessions} == {"idle_timeout"}
        assert settle(lambda: dest.open, 0) == 0
    _no_leaks(baseline)


def _hangs(host: str, port: int):  # type: ignore[no-untyped-def]
    gevent.sleep(60)
    raise AssertionError("the resolver should have been cut off by the connect timeout")


def _fails(host: str, port: int):  # type: ignore[no-untyped-def]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _temporary(host: str, port: int):  # type: ignore[no-untyped-def]
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def _nothing(host: str, port: int):  # type: ignore[no-untyped-def]
    return []


@pytest.mark.parametrize(
    ("resolver", "code", "outcome"),
    [
        (_fails, ReplyCode.HOST_UNREACHABLE, "host_unreachable"),
        (_temporary, ReplyCode.HOST_UNREACHABLE, "host_unreachable"),
        (_nothing, ReplyCode.HOST_UNREACHABLE, "host_unreachable"),
        (_hangs, ReplyCode.TTL_EXPIRED, "ttl_expired"),
    ],
    ids=["nxdomain", "servfail", "no-addresses", "hangs"],
)
def test_dns_fails(probe, sandbox, resolver, code, outcome):
    log = SessionLog()
    nowhere = Address("nowhere.test", 80)
    running = sandbox(probe, nowhere, metrics=log, resolver=resolver, connect_timeout=0.5)
    baseline = _baseline()
    before = len(log.sessions)
    for _ in range(3):
        attempt = attack(_address(running, probe), probe.handshake(nowhere), wait=10)
        assert attempt.ended in ("eof", "reset"), attempt
        assert probe.refused(attempt.received), attempt
        if probe.name == "socks5":
            assert socks5_reply_code(attempt.received) == code
    assert {s.outcome for s in log.wait_for(before + 3)[before:]} == {outcome}
    _no_leaks(baseline)


def _read_reply(sock: socket.socket, probe) -> bytes:  # type: ignore[no-untyped-def]
    """Read until the front end's answer is whole (accepted) or the server closes."""
    data = b""
    while not probe.accepted(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_upstream_proxy_dies(probe, sandbox, proxy):
    """A chains through B; B dies mid-transfer: A's client sees a clean close,
    and later requests get a refusal instead of hanging."""
    log = SessionLog()
    upstream = proxy(socks=["127.0.0.1:0"])
    b = upstream.address("socks5")
    with Destination(sink) as dest:
        running = sandbox(probe, dest.address, metrics=log, idle_timeout=30, upstream=f"socks5://{b.host}:{b.port}")
        baseline = _baseline()
        before = len(log.sessions)
        sock = socket.create_connection(_address(running, probe), timeout=10)
        try:
            sock.sendall(probe.handshake(dest.address))
            assert probe.accepted(_read_reply(sock, probe))
            sock.sendall(b"x" * 10_000)
            assert settle(lambda: -dest.open, -1) <= -1, "the tunnel never reached the destination"
            upstream.stop(0)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
        finally:
            sock.close()
        assert log.wait_for(before + 1)[before].outcome in BROKEN | {"ok"}
        attempt = attack(_address(running, probe), probe.handshake(dest.address), wait=10)
        assert attempt.ended in ("eof", "reset")
        assert probe.refused(attempt.received), attempt
        if probe.name == "socks5":
            assert socks5_reply_code(attempt.received) in (ReplyCode.CONNECTION_REFUSED, ReplyCode.GENERAL_FAILURE)
    _no_leaks(baseline)


def test_out_of_fds_when_dialing_gets_a_reply(probe, sandbox, monkeypatch):
    """EMFILE creating the outbound socket is a failed dial like any other:
    the client gets the front end's error reply (SOCKS5 0x01), not a bare close."""
    import errno
    import types

    from gproxy.core import happy_eyeballs

    def no_fds(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EMFILE, "Too many open files")

    log = SessionLog()
    with EchoServer() as echo:
        dest = Address("127.0.0.1", echo.port)
        running = sandbox(probe, dest, metrics=log)
        # both ways a connect starts: a single address (a gevent socket) and the race (kernel sockets)
        monkeypatch.setattr(happy_eyeballs, "gsocket", types.SimpleNamespace(socket=no_fds))
        monkeypatch.setattr(happy_eyeballs, "_socket", types.SimpleNamespace(socket=no_fds))
        attempt = attack(_address(running, probe), probe.handshake(dest), wait=10)
        monkeypatch.undo()
        assert attempt.ended in ("eof", "reset"), attempt
        assert probe.refused(attempt.received), attempt
        if probe.name == "socks5":
            assert socks5_reply_code(attempt.received) == ReplyCode.GENERAL_FAILURE
        assert log.wait_for(1)[0].outcome == "general_failure"
