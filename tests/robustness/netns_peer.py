"""Run inside a network namespace by the netns tests (``python -m tests.robustness.netns_peer``).

``echo HOST``: TCP and UDP echo servers on HOST (port 0); prints their ports
as JSON, serves until killed. ``udp-associate ...`` / ``connect ...``: a raw
SOCKS5 client; prints what it saw as JSON. Plain blocking sockets, no gevent.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

from tests.helpers import parse_socks5_udp_datagram, read_socks5_bound, socks5_address, socks5_udp_datagram


def echo(host: str) -> None:
    tcp = socket.create_server((host, 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, 0))

    def serve_udp() -> None:
        while True:
            data, peer = udp.recvfrom(65535)
            udp.sendto(data, peer)

    def serve_tcp(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve_udp, daemon=True).start()
    print(json.dumps({"tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1]}), flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve_tcp, args=(conn,), daemon=True).start()


def _socks5(proxy_host: str, proxy_port: int, command: int, host: str, port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((proxy_host, proxy_port), timeout=20)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    sock.sendall(b"\x05" + bytes((command, 0)) + socks5_address(host, port))
    head = sock.recv(4, socket.MSG_WAITALL)
    return sock, head


def udp_associate(proxy_host: str, proxy_port: str, echo_host: str, echo_port: str) -> None:
    control = socket.create_connection((proxy_host, int(proxy_port)), timeout=20)
    control.sendall(b"\x05\x01\x00")
    assert control.recv(2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00" + socks5_address("0.0.0.0", 0))
    bound = read_socks5_bound(control)
    result: dict[str, object] = {"bound": list(bound), "control_local": control.getsockname()[0]}
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(1)
    for _ in range(10):
        try:
            client.sendto(socks5_udp_datagram(echo_host, int(echo_port), b"across namespaces"), tuple(bound))
            source, payload = parse_socks5_udp_datagram(client.recvfrom(65535)[0])
        except (TimeoutError, OSError):
            continue
        result.update(source=list(source), payload=payload.decode())
        break
    print(json.dumps(result), flush=True)


def udp_intruders(proxy_host: str, proxy_port: str, echo_host: str, echo_port: str, other_ip: str) -> None:
    """Open an association from this host's first address, use it once, then try it
    from another port and from another address: those must get nothing back."""
    control = socket.create_connection((proxy_host, int(proxy_port)), timeout=20)
    control.sendall(b"\x05\x01\x00")
    assert control.recv(2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00" + socks5_address("0.0.0.0", 0))
    relay = tuple(read_socks5_bound(control))
    result: dict[str, object] = {}
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    owner.bind((control.getsockname()[0], 0))
    intruders = {"other-port": (control.getsockname()[0], 0), "other-ip": (other_ip, 0)}
    for name, bind in [("owner", None), *intruders.items()]:
        sock = owner if bind is None else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind is not None:
            sock.bind(bind)
        sock.settimeout(0.5)
        answered = False
        for _ in range(6):
            sock.sendto(socks5_udp_datagram(echo_host, int(echo_port), name.encode()), relay)
            try:
                answered = parse_socks5_udp_datagram(sock.recvfrom(65535)[0])[1] == name.encode()
                break
            except (TimeoutError, OSError):
                continue
        result[name] = answered
    print(json.dumps(result), flush=True)


def connect(proxy_host: str, proxy_port: str, host: str, port: str) -> None:
    sock, head = _socks5(proxy_host, int(proxy_port), 1, host, int(port))
    print(json.dumps({"reply": head[1] if len(head) > 1 else None}), flush=True)


def _bulk(sock: socket.socket, size: int) -> None:
    """Send SIZE random bytes to an echo server while reading the echo; print the sha256
    of what was sent and of what came back."""
    import hashlib
    import os

    payload = os.urandom(size)

    def send() -> None:  # in pieces smaller than the relay's chunk: the copy path, not splice
        view = memoryview(payload)
        for start in range(0, size, 8192):
            sock.sendall(view[start : start + 8192])
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    echoed = hashlib.sha256()
    received = 0
    while data := sock.recv(2048):  # a slow reader: the proxy's buffers toward it fill up
        echoed.update(data)
        received += len(data)
    sender.join()
    sock.close()
    sent = hashlib.sha256(payload).hexdigest()
    print(json.dumps({"sent": sent, "echoed": echoed.hexdigest(), "received": received}), flush=True)


def bulk(proxy_host: str, proxy_port: str, host: str, port: str, size: str) -> None:
    """``_bulk`` through a SOCKS5 CONNECT."""
    sock = socket.create_connection((proxy_host, int(proxy_port)), timeout=60)
    sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + socks5_address(host, int(port)))
    assert sock.recv(2, socket.MSG_WAITALL) == b"\x05\x00"
    read_socks5_bound(sock)
    _bulk(sock, int(size))


def bulk_direct(host: str, port: str, size: str) -> None:
    """``_bulk`` over a plain connection (a forwarder in between)."""
    _bulk(socket.create_connection((host, int(port)), timeout=60), int(size))


if __name__ == "__main__":
    commands = {
        "echo": echo,
        "udp-associate": udp_associate,
        "udp-intruders": udp_intruders,
        "connect": connect,
        "bulk": bulk,
        "bulk-direct": bulk_direct,
    }
    commands[sys.argv[1]](*sys.argv[2:])
