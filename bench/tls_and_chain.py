"""Throughput through gproxy subprocesses: SOCKS5, SOCKS5 over TLS, a SOCKS5 -> SOCKS5 chain.

64 MiB echoed per run (MB/s of payload each way), 3 runs each, median shown.
Usage: python bench/tls_and_chain.py   (needs openssl for the test certificate)
"""

from gevent import monkey

monkey.patch_all()

import pathlib  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from tests.helpers import (  # noqa: E402
    EchoServer,
    GproxyProcess,
    ipv4_dest,
    make_cert,
    read_socks5_reply,
    recv_exact,
)

N = 64 * 1024 * 1024
CHUNK = b"x" * 65536


def socks5_connect(sock: socket.socket, port: int) -> None:
    sock.sendall(b"\x05\x01\x00")
    recv_exact(sock, 2)
    sock.sendall(b"\x05\x01\x00" + ipv4_dest("127.0.0.1", port))
    assert read_socks5_reply(sock)[1] == 0


def echo_rate(sock: socket.socket) -> float:
    def send() -> None:
        for _ in range(N // len(CHUNK)):
            sock.sendall(CHUNK)

    start = time.perf_counter()
    sender = gevent.spawn(send)
    got = 0
    while got < N:
        got += len(sock.recv(262144))
    sender.get()
    return N / (time.perf_counter() - start) / 1e6


def main() -> None:
    cert, key = make_cert(pathlib.Path(tempfile.mkdtemp()))
    tls_args = ("--socks-tls", "0", "--cert", cert, "--key", key)
    with (
        EchoServer() as echo,
        GproxyProcess("--socks", "0", *tls_args, "-q", listeners=2) as first,
        GproxyProcess("--socks", "0", "-q", "--upstream", f"socks5://127.0.0.1:{first.port('socks5')}") as chain,
    ):
        context = ssl.create_default_context(cafile=cert)

        def tls() -> socket.socket:
            raw = socket.create_connection(("127.0.0.1", first.port("socks5-tls")))
            return context.wrap_socket(raw, server_hostname="localhost")

        cases = {
            "socks5": lambda: socket.create_connection(("127.0.0.1", first.port("socks5"))),
            "socks5-tls": tls,
            "socks5 chain (2 hops)": lambda: socket.create_connection(("127.0.0.1", chain.port("socks5"))),
        }
        for name, connect in cases.items():
            rates = []
            for _ in range(3):
                sock = connect()
                socks5_connect(sock, echo.port)
                rates.append(echo_rate(sock))
                sock.close()
            runs = " ".join(f"{rate:.0f}" for rate in rates)
            print(f"{name:24s} median {statistics.median(rates):6.1f} MB/s  runs {runs}")


if __name__ == "__main__":
    main()
