"""--auth-url end to end (SOCKS5, HTTP, HTTPS listeners) and per-user connection limits
(--max-conns-per-user, [users.NAME] max-conns, the auth service's max-conns)."""

from __future__ import annotations

import base64
import socket
import ssl
from pathlib import Path

import pytest

from gproxy import Config, Proxy
from tests.fake_auth import FakeAuthService
from tests.helpers import (
    access_lines,
    echo_through,
    ipv4_dest,
    make_cert,
    read_socks5_reply,
    recv_all,
    recv_exact,
    recv_head,
    run_gproxy,
    start_gproxy,
    wait_for,
)

PASSWORD = "s3cr3t-Pw0rd"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def socks5_auth(address: tuple[str, int], user: bytes, password: bytes) -> tuple[socket.socket, bytes]:
    """Greeting and RFC 1929 auth; returns the socket and the auth reply."""
    sock = socket.create_connection(address, timeout=15)
    sock.sendall(b"\x05\x01\x02")
    assert recv_exact(sock, 2) == b"\x05\x02"
    sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    return sock, recv_exact(sock, 2)


def socks5_request(sock: socket.socket, dest: bytes) -> bytes:
    sock.sendall(b"\x05\x01\x00" + dest)
    return read_socks5_reply(sock)


def http_connect(sock: socket.socket, port: int, user: str, password: str) -> bytes:
    """CONNECT 127.0.0.1:port with Basic credentials; returns the status line."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    sock.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
    )
    return recv_head(sock).split(b"\r\n")[0]


def log_entries(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [dict(field.split("=", 1) for field in line.split()) for line in access_lines(path)]


def test_end_to_end_over_socks5_http_and_https(tmp_path, cert, echo_tcp):
    users = {name: (PASSWORD, None) for name in ("socksuser", "httpuser", "httpsuser")}
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(*cert)
    log = tmp_path / "access.log"
    with FakeAuthService(users, tls=server_tls) as service:
        running = start_gproxy(
            *("--socks", "127.0.0.1:0", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0"),
            *("--cert", cert[0], "--key", cert[1], "--ca", cert[0], "--auth-url", service.url),
            *("--user", "local:localpw", "--access-log", str(log), "-v"),
            listeners=3,
        )
        try:
            dest = ipv4_dest("127.0.0.1", echo_tcp.port)
            socks = ("127.0.0.1", running.port("socks5"))
            # SOCKS5: the service is told exactly who, from where, on which listener
            sock, reply = socks5_auth(socks, b"socksuser", PASSWORD.encode())
            assert reply == b"\x01\x00"
            assert socks5_request(sock, dest)[1] == 0
            assert echo_through(sock, b"hi") == b"hi"
            client = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.close()
            assert service.requests == [
                {"user": "socksuser", "password": PASSWORD, "client": client, "listener": "socks5"}
            ]
            # the cache spares the second call
            sock, reply = socks5_auth(socks, b"socksuser", PASSWORD.encode())
            assert reply == b"\x01\x00" and socks5_request(sock, dest)[1] == 0
            sock.close()
            assert len(service.requests) == 1
            # a local user with a wrong password never reaches the service; an unknown one does, and is refused
            sock, reply = socks5_auth(socks, b"local", PASSWORD.encode())
            assert reply == b"\x01\x01"
            sock.close()
            sock, reply = socks5_auth(socks, b"nobody", PASSWORD.encode())
            assert reply == b"\x01\x01"
            sock.close()
            assert [request["user"] for request in service.requests] == ["socksuser", "nobody"]
            # SOCKS4 has no password: refused, as with local users
            with socket.create_connection(socks, timeout=15) as sock4:
                sock4.sendall(b"\x04\x01" + echo_tcp.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"\0")
                assert recv_all(sock4)[:2] == b"\x00\x5b"
            # HTTP and HTTPS listeners
            with socket.create_connection(("127.0.0.1", running.port("http")), timeout=15) as plain:
                assert http_connect(plain, echo_tcp.port, "httpuser", PASSWORD).split()[1] == b"200"
                assert echo_through(plain, b"x") == b"x"
            with socket.create_connection(("127.0.0.1", running.port("http")), timeout=15) as plain:
                assert http_connect(plain, echo_tcp.port, "httpuser", "wrong").split()[1] == b"407"
            context = ssl.create_default_context(cafile=cert[0])
            raw = socket.create_connection(("127.0.0.1", running.port("https")), timeout=15)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert http_connect(tls, echo_tcp.port, "httpsuser", PASSWORD).split()[1] == b"200"
                assert echo_through(tls, b"y") == b"y"
            assert [(r["user"], r["listener"]) for r in service.requests[2:]] == [
                ("httpuser", "http"),
                ("httpuser", "http"),
                ("httpsuser", "https"),
            ]
            wait_for(lambda: len(log_entries(log)) >= 8, what="the access log")
            assert running.stop() == 0
        finally:
            running.__exit__()
    entries = log_entries(log)
    assert [(e["user"], e["outcome"]) for e in entries if e["user"] == "socksuser"] == [("socksuser", "ok")] * 2
    assert ("nobody", "auth_failed") in [(e["user"], e["outcome"]) for e in entries]
    assert any("auth_failed" in line for line in running.stderr_lines)  # -v: the debug lines are there to grep
    everything = log.read_text() + "".join(running.stderr_lines)
    assert PASSWORD not in everything


def test_unavailable_service_rejects_with_auth_unavailable_and_one_warning(tmp_path, echo_tcp):
    log = tmp_path / "access.log"
    with FakeAuthService({"remote": (PASSWORD, None)}) as service:
        service.mode = "500"
        running = start_gproxy(
            *("--socks", "127.0.0.1:0", "--http", "127.0.0.1:0", "--auth-url", service.url),
            *("--access-log", str(log), "-v"),
            listeners=2,
        )
        try:
            socks = ("127.0.0.1", running.port("socks5"))
            for _ in range(2):
                sock, reply = socks5_auth(socks, b"remote", PASSWORD.encode())
                assert reply == b"\x01\x01"
                sock.close()
            with socket.create_connection(("127.0.0.1", running.port("http")), timeout=15) as plain:
                assert http_connect(plain, echo_tcp.port, "remote", PASSWORD).split()[1] == b"407"
            service.mode = "silent"
            sock, reply = socks5_auth(socks, b"remote", PASSWORD.encode())  # about 5 s
            assert reply == b"\x01\x01"
            sock.close()
            wait_for(lambda: len(log_entries(log)) == 4, what="four access-log lines")
            assert running.stop() == 0
        finally:
            running.__exit__()
    assert len(service.requests) == 4
    assert [e["outcome"] for e in log_entries(log)] == ["auth_unavailable"] * 4
    warnings = [line for line in running.stderr_lines if "--auth-url" in line]
    assert len(warnings) == 1, warnings  # one per 10 s
    assert PASSWORD not in log.read_text() + "".join(running.stderr_lines)


# -- per-user connection limits ------------------------------------------------------------


def start(settings: dict[str, object], users_tables: dict[str, object] | None = None) -> Proxy:
    settings = {"socks": ["127.0.0.1:0"], "http": ["127.0.0.1:0"], "handshake-timeout": 5, **settings}
    extra = {"users": users_tables} if users_tables else None
    return Proxy(Config.from_settings(settings, extra)).start()


def open_tunnel(proxy: Proxy, echo_port: int, user: bytes, password: bytes = b"pw") -> tuple[socket.socket, int]:
    """A SOCKS5 CONNECT as ``user``: (socket, reply code); the auth itself must succeed."""
    sock, reply = socks5_auth(("127.0.0.1", proxy.address("socks5").port), user, password)
    assert reply == b"\x01\x00"
    return sock, socks5_request(sock, ipv4_dest("127.0.0.1", echo_port))[1]


def refused_code(proxy: Proxy, echo_port: int, user: bytes, password: bytes = b"pw") -> int:
    """The reply code of a SOCKS5 CONNECT expected to be refused (the socket is closed)."""
    sock, code = open_tunnel(proxy, echo_port, user, password)
    sock.close()
    return code


def http_status(proxy: Proxy, echo_port: int, user: str, password: str = "pw") -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.address("http").port), timeout=15) as sock:
        return http_connect(sock, echo_port, user, password).split()[1]


def test_max_conns_per_user_over_socks5_and_http(tmp_path, echo_tcp):
    log = tmp_path / "access.log"
    proxy = start({"user": ["alice:pw", "bob:pw"], "max-conns-per-user": 2, "access-log": str(log)})
    try:
        kept = [open_tunnel(proxy, echo_tcp.port, b"alice") for _ in range(2)]
        assert [code for _, code in kept] == [0, 0]
        assert refused_code(proxy, echo_tcp.port, b"alice") == 0x02  # auth succeeds, the request is refused
        assert http_status(proxy, echo_tcp.port, "alice") == b"429"
        others = [open_tunnel(proxy, echo_tcp.port, b"bob") for _ in range(2)]  # other users unaffected
        assert [code for _, code in others] == [0, 0]
        assert echo_through(kept[0][0], b"still") == b"still"
        kept[0][0].close()
        wait_for(lambda: proxy.users.sessions.count("alice") == 1, what="alice's session to end")
        again, code = open_tunnel(proxy, echo_tcp.port, b"alice")
        assert code == 0
        for sock in [again, kept[1][0], *(s for s, _ in others)]:
            sock.close()
        wait_for(lambda: not proxy.users.sessions.count("alice"), what="every session to end")
    finally:
        proxy.stop(0)
    outcomes = [(e["user"], e["outcome"]) for e in log_entries(log)]
    assert outcomes.count(("alice", "user_limit")) == 2
    assert not [o for o in outcomes if o[0] == "bob" and o[1] != "ok"]


def test_users_table_max_conns_overrides_the_global_one(echo_tcp):
    tables = {"alice": {"max-conns": 1}, "bob": {"max-conns": 0}}
    proxy = start({"user": ["alice:pw", "bob:pw", "carol:pw"], "max-conns-per-user": 2}, tables)
    try:
        alice, code = open_tunnel(proxy, echo_tcp.port, b"alice")
        assert code == 0
        assert refused_code(proxy, echo_tcp.port, b"alice") == 2
        assert http_status(proxy, echo_tcp.port, "alice") == b"429"
        bobs = [open_tunnel(proxy, echo_tcp.port, b"bob") for _ in range(4)]  # 0: no limit
        assert [code for _, code in bobs] == [0] * 4
        carols = [open_tunnel(proxy, echo_tcp.port, b"carol") for _ in range(2)]  # the global 2
        assert [code for _, code in carols] == [0, 0]
        assert refused_code(proxy, echo_tcp.port, b"carol") == 2
        for sock, _ in [(alice, 0), *bobs, *carols]:
            sock.close()
    finally:
        proxy.stop(0)


def test_the_services_answer_sets_max_conns_and_destination_rules(echo_tcp):
    users = {
        "limited": (PASSWORD, {"max-conns": 1, "rate": "1M"}),
        "fenced": (PASSWORD, {"deny-dest": "127.0.0.0/8"}),
        "free": (PASSWORD, None),
    }
    with FakeAuthService(users) as service:
        proxy = start({"auth-url": service.url, "max-conns-per-user": 5, "user": ["local:pw"]})
        try:
            password = PASSWORD.encode()
            first, code = open_tunnel(proxy, echo_tcp.port, b"limited", password)
            assert code == 0
            assert refused_code(proxy, echo_tcp.port, b"limited", password) == 2
            assert http_status(proxy, echo_tcp.port, "limited", PASSWORD) == b"429"
            assert proxy.users.settings("limited").rate == 1 << 20  # carried for the rate limiter
            assert refused_code(proxy, echo_tcp.port, b"fenced", password) == 0x02  # the service's deny-dest
            frees = [open_tunnel(proxy, echo_tcp.port, b"free", password) for _ in range(3)]
            locals_ = [open_tunnel(proxy, echo_tcp.port, b"local") for _ in range(3)]
            assert [code for _, code in frees + locals_] == [0] * 6
            for sock, _ in [(first, 0), *frees, *locals_]:
                sock.close()
        finally:
            proxy.stop(0)


def test_a_users_table_without_password_is_fine_with_auth_url(echo_tcp):
    with FakeAuthService({"remote": (PASSWORD, None)}) as service:
        proxy = start({"auth-url": service.url}, {"remote": {"max-conns": 1}})
        try:
            first, code = open_tunnel(proxy, echo_tcp.port, b"remote", PASSWORD.encode())
            assert code == 0
            assert refused_code(proxy, echo_tcp.port, b"remote", PASSWORD.encode()) == 2
            first.close()
        finally:
            proxy.stop(0)


def test_auth_url_alone_turns_authentication_on_and_satisfies_the_open_proxy_rule():
    config = Config.build(socks=["0.0.0.0:0"], auth_url="http://127.0.0.1:9/")
    assert config.has_auth
    with pytest.raises(Exception, match="refusing to run an open proxy"):
        Config.build(socks=["0.0.0.0:0"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--auth-url", "ftp://auth.example/"), "--auth-url: 'ftp://auth.example/' must start with http://"),
        (("--auth-url", "http://u:hidden@auth.example/"), "--auth-url: 'http://u:***@auth.example/': credentials"),
        (("--max-conns-per-user", "-1"), "--max-conns-per-user may not be negative"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(args, message):
    result = run_gproxy("--socks", "127.0.0.1:0", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr and "hidden" not in result.stderr
