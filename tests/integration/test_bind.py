"""SOCKS5 BIND end to end: the test plays both the client and the remote side."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import read_socks5_bound, recv_all, recv_exact, socks5_handshake

BIND = 2


@pytest.fixture
def socks_addr(proxy):
    def start(**settings):
        address = proxy(socks=["127.0.0.1:0"], **settings).address("socks5")
        return address.host, address.port

    return start


def test_bind_end_to_end(socks_addr):
    client = socket.create_connection(socks_addr(), timeout=5)
    try:
        bound = socks5_handshake(client, BIND, "127.0.0.1", 0)
        assert bound[0] == "127.0.0.1" and bound[1] != 0
        client.sendall(b"early bytes ")  # before the peer connects: relayed once it has
        remote = socket.create_connection(bound, timeout=5)
        try:
            assert read_socks5_bound(client) == remote.getsockname()  # second reply: the peer
            client.sendall(b"to remote")
            assert recv_exact(remote, 21) == b"early bytes to remote"
            remote.sendall(b"to client")
            assert recv_exact(client, 9) == b"to client"
            remote.shutdown(socket.SHUT_WR)  # half-close: the other direction keeps going
            assert client.recv(10) == b""
            client.sendall(b"still flowing")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(remote) == b"still flowing"
        finally:
            remote.close()
    finally:
        client.close()


def test_bind_refuses_a_peer_other_than_dst_addr(socks_addr):
    client = socket.create_connection(socks_addr(), timeout=5)
    try:
        bound = socks5_handshake(client, BIND, "127.0.0.2", 0)
        stranger = socket.create_connection(bound, timeout=5)  # from 127.0.0.1: not who was named
        stranger.settimeout(5)
        assert stranger.recv(10) == b""
        stranger.close()
        peer = socket.socket()
        peer.bind(("127.0.0.2", 0))
        peer.connect(bound)
        try:
            assert read_socks5_bound(client) == peer.getsockname()
            peer.sendall(b"ok")
            assert recv_exact(client, 2) == b"ok"
        finally:
            peer.close()
    finally:
        client.close()


def test_bind_times_out_with_ttl_expired(socks_addr):
    client = socket.create_connection(socks_addr(connect_timeout=0.3), timeout=5)
    try:
        socks5_handshake(client, BIND, "0.0.0.0", 0)
        with pytest.raises(ConnectionError) as failure:
            read_socks5_bound(client)
        assert failure.value.args[0] == 0x06
    finally:
        client.close()
