"""Run inside a network namespace by the transparent-proxy tests
(``python -m tests.frontends.transparent_peer``). Plain blocking sockets, no gevent.

``server HOST...``: on each HOST, a TCP server on port 7000 and 8000 that first sends
the peer address it sees (one line), then echoes; a UDP server on 8000 that answers
each datagram with ``peer=IP:PORT`` and the datagram. Prints ``ready`` when bound.
``bulk HOST PORT SIZE``: connect, read the peer line, send SIZE random bytes while
reading the echo; prints JSON with the peer line and both sha256 digests.
``udp HOST PORT``: one datagram, prints JSON with the answer and where it came from.
``direct HOST PORT``: connect and print JSON with what arrived before EOF.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading


def _serve_tcp(listener: socket.socket) -> None:
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=_echo, args=(conn, peer), daemon=True).start()


def _echo(conn: socket.socket, peer: tuple[str, int]) -> None:
    with conn:
        conn.sendall(f"peer={peer[0]}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(f"peer={peer[0]};".encode() + data, peer)


def server(*hosts: str) -> None:
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in (7000, 8000):
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(64)
            threading.Thread(target=_serve_tcp, args=(listener,), daemon=True).start()
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 8000))
        threading.Thread(target=_serve_udp, args=(udp,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _readline(sock: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


def bulk(host: str, port: str, size: str) -> None:
    sock = socket.create_connection((host, int(port)), timeout=20)
    peer = _readline(sock)
    payload = os.urandom(int(size))

    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    echoed = hashlib.sha256()
    while data := sock.recv(65536):
        echoed.update(data)
    sender.join()
    sock.close()
    print(json.dumps({"peer": peer, "sent": hashlib.sha256(payload).hexdigest(), "echoed": echoed.hexdigest()}))


def udp(host: str, port: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.sendto(b"hello", (host, int(port)))
    data, source = sock.recvfrom(65535)
    print(json.dumps({"answer": data.decode(), "source": [source[0], source[1]]}))


def direct(host: str, port: str) -> None:
    sock = socket.create_connection((host, int(port)), timeout=20)
    received = b""
    try:
        sock.sendall(b"anyone there?")
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    sock.close()
    print(json.dumps({"received": received.decode(errors="replace")}))


if __name__ == "__main__":
    {"server": server, "bulk": bulk, "udp": udp, "direct": direct}[sys.argv[1]](*sys.argv[2:])
