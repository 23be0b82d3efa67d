"""Time to connect through gproxy's SOCKS5 when a name's IPv6 address is black-holed.

The name resolves (an injected resolver) to ``[::1]:P``, whose accept queue is full so
SYNs are dropped, and ``127.0.0.1:P``, which accepts. Run it against two checkouts to
compare (the public API is the same):

    PYTHONPATH=. python bench/happy_eyeballs.py
    PYTHONPATH=/path/to/older/checkout python bench/happy_eyeballs.py
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from gproxy import Config, Proxy  # noqa: E402

ROUNDS = 3
CONNECT_TIMEOUT = 10


def main() -> None:
    hole = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    hole.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    hole.bind(("::1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    fillers = []
    for _ in range(2):
        filler = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("::1", port))
        fillers.append(filler)
    time.sleep(0.2)
    good = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    good.bind(("127.0.0.1", port))
    good.listen(64)

    def resolver(host: str, p: int) -> list[tuple[int, tuple[object, ...]]]:
        return [(socket.AF_INET6, ("::1", p, 0, 0)), (socket.AF_INET, ("127.0.0.1", p))]

    proxy = Proxy(Config.build(socks=["127.0.0.1:0"], connect_timeout=CONNECT_TIMEOUT), resolver=resolver).start()
    proxy_port = [address.port for kind, address in proxy.addresses if kind == "socks5"][0]
    name = b"dual.example"
    request = b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
    times = []
    for _ in range(ROUNDS):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=CONNECT_TIMEOUT + 5) as client:
            client.sendall(request)
            answer = b""
            while len(answer) < 12:  # the method choice (2 bytes) and the CONNECT reply (10)
                chunk = client.recv(12 - len(answer))
                if not chunk:
                    break
                answer += chunk
        times.append(time.monotonic() - started)
        if answer[3:4] != b"\x00":
            print(f"round failed: SOCKS5 reply {answer[3:4].hex()} after {times[-1]:.3f} s")
            continue
        accepted, peer = good.accept()
        accepted.close()
    proxy.stop(0)
    for sock in (hole, good, *fillers):
        sock.close()
    print(
        f"{__import__('gproxy').__file__}: connect through SOCKS5 by name, IPv6 black-holed: "
        f"median {statistics.median(times):.3f} s "
        f"(runs {', '.join(f'{t:.3f}' for t in times)}; --connect-timeout {CONNECT_TIMEOUT} s)"
    )


if __name__ == "__main__":
    main()
