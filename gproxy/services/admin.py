"""``--admin ADDR``: the operators' HTTP listener (gevent's pywsgi).

``GET /sessions`` (JSON), ``DELETE /sessions/ID``, ``GET /healthz`` and ``GET /``
(a self-refreshing HTML table). Off loopback, every request needs
``Authorization: Bearer TOKEN`` (--admin-token). With ``--workers`` each worker
also serves its own sessions on a unix socket in the supervisor's private
directory, and whichever worker gets a request on the public port asks the others.
"""

from __future__ import annotations

import hmac
import html
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket

from gproxy.core.config import ListenerSpec
from gproxy.core.errors import ConfigError
from gproxy.core.log import logger
from gproxy.services.web import GatedServer, bounded_handler

if TYPE_CHECKING:
    from gproxy.core.session import Session
    from gproxy.server.proxy import Proxy

#: the most bytes read from another worker's answer (10,000 sessions take about 2 MB)
MAX_PEER_ANSWER = 64 << 20
#: seconds another worker has to answer
PEER_TIMEOUT = 5.0
#: rows the HTML page shows (the busiest); /sessions always has them all
PAGE_ROWS = 500
#: seconds between the page's refreshes
PAGE_REFRESH = 2
#: rows written between two yields to the event loop
ROWS_PER_SLICE = 1000
FIELDS = ("id", "listener", "proto", "cmd", "client", "user", "dest", "via", "up", "down", "age")

StartResponse = Callable[..., Any]


def session_rows(sessions: Iterable[Session]) -> list[dict[str, object]]:
    """/sessions rows, bytes as the relay counts them now (one pass)."""
    now = time.monotonic()
    rows: list[dict[str, object]] = []
    for session in sessions:
        up, down = session.live_bytes()
        rows.append(
            {
                "id": session.id,
                "listener": session.listener,
                "proto": session.proto,
                "cmd": session.cmd,
                "client": str(session.client),
                "user": session.user,
                "dest": session.dest,
                "via": session.via,
                "up": up,
                "down": down,
                "age": round(now - session.started, 3),
            }
        )
    return rows


def own_sessions_json(proxy: Proxy) -> bytes:
    """This process's sessions as a JSON array, built ROWS_PER_SLICE at a time with a
    yield between slices: tunnels keep moving while 10,000 rows are written."""
    sessions = [session for session, _ in proxy.open.values()]
    parts = []
    for start in range(0, len(sessions), ROWS_PER_SLICE):
        if start:
            gevent.sleep(0)
        text = json.dumps(session_rows(sessions[start : start + ROWS_PER_SLICE]), separators=(",", ":"))
        parts.append(text[1:-1].encode())
    return b"[" + b",".join(parts) + b"]"


class AdminService:
    """The admin HTTP API on a socket bound by the Proxy (or a worker's private unix socket)."""

    def __init__(
        self,
        proxy: Proxy,
        sock: socket.socket,
        *,
        token: str | None,
        timeout: float = 10.0,
        gated: bool = True,
        aggregate: bool = True,
    ) -> None:
        self.proxy = proxy
        self._expected = None if token is None else b"Bearer " + token.encode()
        #: False on a worker's private socket: answer for this process only
        self.aggregate = aggregate
        self.server = GatedServer(sock, self._app, log=None, error_log=logger, handler_class=bounded_handler(timeout))
        self.server.kind = "admin"
        self.server.proxy = proxy if gated else None
        self._private: AdminService | None = None
        #: drained last: /healthz answers 503 while the proxy drains, not "connection refused"
        self.stops_last = True

    @classmethod
    def build(cls, proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> AdminService:
        config = proxy.config
        service = cls(proxy, sock, token=config.admin_token, timeout=config.handshake_timeout)
        worker = proxy.worker
        if worker is not None:
            path = os.path.join(worker.admin_dir, f"{worker.index}.sock")
            private = _bind_unix(path, spec)
            service._private = cls(
                proxy, private, token=None, timeout=config.handshake_timeout, gated=False, aggregate=False
            )
        return service

    def start(self) -> None:
        self.server.start()
        if self._private is not None:
            self._private.start()

    def stop(self) -> None:
        self.server.stop(timeout=1)
        if self._private is not None:
            self._private.stop()

    # -- the application ------------------------------------------------------------

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self._expected is None:
            return True
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if not self._authorized(environ):
            return _answer(
                start_response, "401 Unauthorized", b"bearer token required\n", [("WWW-Authenticate", "Bearer")]
            )
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path.startswith("/sessions/"):
            if method != "DELETE":
                return _answer(start_response, "405 Method Not Allowed", b"", [("Allow", "DELETE")])
            return self._delete(path.removeprefix("/sessions/"), start_response)
        routes = {"/sessions": self._sessions, "/healthz": self._healthz, "/": self._page}
        route = routes.get(path)
        if route is None:
            return _answer(start_response, "404 Not Found", b"not found: try /, /sessions or /healthz\n")
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"", [("Allow", "GET, HEAD")])
        return route(start_response)

    def _healthz(self, start_response: StartResponse) -> list[bytes]:
        if self.proxy.draining:
            return _answer(start_response, "503 Service Unavailable", b"draining\n")
        return _answer(start_response, "200 OK", b"ok\n")

    def _sessions(self, start_response: StartResponse) -> list[bytes]:
        return _answer(start_response, "200 OK", self.sessions_json(), [("Content-Type", "application/json")])

    def sessions_json(self) -> bytes:
        """This process's sessions as a JSON array, with every other worker's when aggregating."""
        own = own_sessions_json(self.proxy)
        peers = self._peers()
        if not peers:
            return own
        jobs = [gevent.spawn(_ask_peer, path, "GET", "/sessions") for path in peers]
        gevent.joinall(jobs, timeout=PEER_TIMEOUT + 1)
        parts = [own[1:-1]]
        for path, job in zip(peers, jobs, strict=True):
            answer = job.value if job.successful() else None
            if answer is None or answer[0] != 200 or not (answer[1][:1] == b"[" and answer[1][-1:] == b"]"):
                logger.warning("admin: worker socket %s gave no session list", os.path.basename(path))
                continue
            parts.append(answer[1][1:-1])  # arrays joined as they are: no parsing
        return b"[" + b",".join(part for part in parts if part) + b"]"

    def _delete(self, session_id: str, start_response: StartResponse) -> list[bytes]:
        owner = self._owner_socket(session_id)
        if owner is not None:
            answer = _ask_peer(owner, "DELETE", f"/sessions/{session_id}")
            status = answer[0] if answer is not None else 404
            if status == 204:
                return _answer(start_response, "204 No Content", b"")
        elif self.proxy.end_session(session_id):
            return _answer(start_response, "204 No Content", b"")
        return _answer(start_response, "404 Not Found", b"no such session\n")

    def _page(self, start_response: StartResponse) -> list[bytes]:
        rows = json.loads(self.sessions_json())
        body = render_page(rows).encode()
        return _answer(start_response, "200 OK", body, [("Content-Type", "text/html; charset=utf-8")])

    # -- other workers ------------------------------------------------------------------

    def _peers(self) -> list[str]:
        """The other workers' private sockets (none without --workers, or on a private socket)."""
        worker = self.proxy.worker
        if worker is None or not self.aggregate:
            return []
        mine = f"{worker.index}.sock"
        try:
            names = sorted(os.listdir(worker.admin_dir))
        except OSError:
            return []
        return [os.path.join(worker.admin_dir, name) for name in names if name.endswith(".sock") and name != mine]

    def _owner_socket(self, session_id: str) -> str | None:
        """The private socket of the worker that owns ``session_id`` (``INDEX-N``), if another one does."""
        worker = self.proxy.worker
        index, sep, _ = session_id.partition("-")
        if worker is None or not self.aggregate or not sep or not _is_worker_index(index) or int(index) == worker.index:
            return None
        path = os.path.join(worker.admin_dir, f"{int(index)}.sock")
        return path if os.path.exists(path) else None


def _is_worker_index(text: str) -> bool:
    """A worker's number as a session id starts: a few ASCII digits (int() takes other digits,
    and refuses over 4,300 of them with an error)."""
    return 0 < len(text) <= 6 and text.isascii() and text.isdigit()


def _answer(
    start_response: StartResponse, status: str, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    headers = list(headers)
    if not any(name == "Content-Type" for name, _ in headers):
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    headers += [("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    start_response(status, headers)
    return [body]


def _bind_unix(path: str, spec: ListenerSpec) -> socket.socket:
    """A worker's private admin socket (a dead predecessor's file is replaced)."""
    sock: socket.socket = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.exists(path):
            os.unlink(path)
        sock.bind(path)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--admin {spec}: cannot serve the worker socket {path}: {exc.strerror or exc}") from None
    return sock


def _ask_peer(path: str, method: str, target: str) -> tuple[int, bytes] | None:
    """One HTTP/1.0 request to another worker's private socket: (status, body), None on failure."""
    try:
        with gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PEER_TIMEOUT)
            sock.connect(path)
            sock.sendall(f"{method} {target} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
            chunks, size = [], 0
            with gevent.Timeout(PEER_TIMEOUT, False):
                while size <= MAX_PEER_ANSWER:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                else:
                    return None
    except OSError:
        return None
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1]), body


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}
.totals{margin:.5em 0 1em;color:#444}.totals b{color:#000}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.3em .6em;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#2d3b4e;color:#fff;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#f4f6f9}
.note{color:#777;margin-top:.7em}
"""


def render_page(rows: list[dict[str, Any]]) -> str:
    """The HTML page: totals, then the busiest sessions (no scripts, no external assets)."""
    up = sum(int(row.get("up") or 0) for row in rows)
    down = sum(int(row.get("down") or 0) for row in rows)
    users = {row.get("user") for row in rows if row.get("user")}
    rows = sorted(rows, key=lambda row: -(int(row.get("up") or 0) + int(row.get("down") or 0)))
    head = "".join(f"<th>{name}</th>" for name in FIELDS)
    lines = []
    for row in rows[:PAGE_ROWS]:
        cells = []
        for name in FIELDS:
            value = row.get(name)
            if name in ("up", "down"):
                cells.append(f'<td class="n">{_human(int(value or 0))}</td>')
            elif name == "age":
                cells.append(f'<td class="n">{float(value or 0):.0f} s</td>')
            else:
                cells.append(f"<td>{html.escape(str(value if value is not None else '-'))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">showing the {PAGE_ROWS} busiest of {len(rows)}</p>' if len(rows) > PAGE_ROWS else ""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{PAGE_REFRESH}"><title>gproxy sessions</title>'
        f"<style>{_STYLE}</style></head><body><h1>gproxy: open sessions</h1>"
        f'<div class="totals"><b>{len(rows)}</b> sessions &middot; <b>{len(users)}</b> users &middot; '
        f"up <b>{_human(up)}</b> &middot; down <b>{_human(down)}</b></div>"
        f"<table><tr>{head}</tr>{''.join(lines)}</table>{more}"
        f'<p class="note">refreshes every {PAGE_REFRESH} s &middot; JSON at /sessions</p></body></html>'
    )
