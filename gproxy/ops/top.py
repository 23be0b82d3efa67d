"""``gproxy top [ADDR]``: a live terminal view of an admin listener (``--admin``).

Polls ``GET /sessions`` once a second and shows the open sessions sorted by their
current throughput, and per-user totals; ``q`` quits, Ctrl-C too (exit 130). The
live view needs a terminal; ``--once`` prints one screen anywhere. Drawn with rich;
runs as a plain program (no gevent), blocking reads with timeouts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import select
import signal
import sys
import termios
import time
import tty
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from gproxy.core.addr import ascii_digits

if TYPE_CHECKING:
    from rich.text import Text

#: where ``gproxy top`` looks without ADDR
DEFAULT_ADMIN = "127.0.0.1:9180"
#: the largest /sessions answer read (10,000 sessions fit many times)
MAX_BODY = 64 << 20
#: what reading /sessions can raise: no connection, not HTTP, not JSON
FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)
#: bounds on --interval: polling faster only loads the proxy; slower is no live view
MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0


@dataclass
class Row:
    """One open session as /sessions gives it, with its current rate."""

    id: str
    user: str
    client: str
    proto: str
    cmd: str
    dest: str
    via: str
    up: int
    down: int
    age: float
    rate: float = 0.0  # bytes per second, both ways, since the last poll


@dataclass
class View:
    """What one screen shows: rows by rate, per-user totals, and overall figures."""

    rows: list[Row] = field(default_factory=list)
    users: list[tuple[str, int, int, int, float]] = field(default_factory=list)  # user, sessions, up, down, rate
    rate: float = 0.0
    error: str | None = None


def parse_sessions(payload: Any) -> list[Row]:
    """Rows from a /sessions JSON array; malformed entries are skipped."""
    rows = []
    if not isinstance(payload, list):
        raise ValueError("/sessions did not answer a JSON array")
    for item in payload:
        if not isinstance(item, dict):
            continue
        try:
            rows.append(
                Row(
                    id=str(item["id"]),
                    user=str(item.get("user") or "-"),
                    client=str(item.get("client", "-")),
                    proto=str(item.get("proto", "-")),
                    cmd=str(item.get("cmd", "-")),
                    dest=str(item.get("dest", "-")),
                    via=str(item.get("via") or "-"),
                    up=int(item.get("up", 0)),
                    down=int(item.get("down", 0)),
                    age=float(item.get("age", 0.0)),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def build_view(rows: list[Row], previous: dict[str, int], elapsed: float) -> View:
    """Rates from the byte totals of the previous poll (``id -> up+down``), rows sorted
    by rate, then per-user totals sorted by rate."""
    for row in rows:
        before = previous.get(row.id)
        total = row.up + row.down
        row.rate = (total - before) / elapsed if before is not None and elapsed > 0 else 0.0
    rows.sort(key=lambda row: (-row.rate, -(row.up + row.down), row.id))
    users: dict[str, list[float]] = {}
    for row in rows:
        entry = users.setdefault(row.user, [0, 0, 0, 0.0])
        entry[0] += 1
        entry[1] += row.up
        entry[2] += row.down
        entry[3] += row.rate
    per_user = sorted(
        ((user, int(n), int(up), int(down), rate) for user, (n, up, down, rate) in users.items()),
        key=lambda item: (-item[4], item[0]),
    )
    return View(rows=rows, users=per_user, rate=sum(row.rate for row in rows))


def human(n: float) -> str:
    """1536 -> '1.5K' (binary units, as curl prints them)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def shown(value: str) -> Text:
    """Text from the proxy as a plain rich Text: never markup, and every character that
    is not printable (escape sequences, bidi overrides) spelled out as ``\\x1b``."""
    from rich.text import Text

    return Text("".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in value))


def render(view: View, source: str, width: int, height: int) -> Any:
    """The screen as a rich renderable; what the proxy sent is shown as plain text."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = Text(f"gproxy top  {source}  sessions {len(view.rows)}  {human(view.rate)}B/s  (q quits)", style="bold")
    if view.error:
        title.append(f"   {shown(view.error).plain}", style="red")
    wide = width >= 120  # a narrow terminal keeps what tells sessions apart: rate, user, dest, bytes
    sessions = Table(expand=True, show_edge=False, pad_edge=False)
    sessions.add_column("rate/s", justify="right", no_wrap=True, min_width=7)
    sessions.add_column("user", no_wrap=True, max_width=16)
    if wide:
        sessions.add_column("client", no_wrap=True, max_width=24)
        sessions.add_column("proto", no_wrap=True, max_width=8)
        sessions.add_column("cmd", no_wrap=True, max_width=8)
    sessions.add_column("dest", overflow="fold", ratio=1, min_width=16)  # never hidden
    if wide:
        sessions.add_column("via", no_wrap=True, max_width=24)
    for name in ("up", "down", "age"):
        sessions.add_column(name, justify="right", no_wrap=True, min_width=6)
    room = max(height - 8 - min(len(view.users), 5), 1)
    for row in view.rows[:room]:
        cells: list[Text | str] = [human(row.rate), shown(row.user)]
        if wide:
            cells += [shown(row.client), shown(row.proto), shown(row.cmd)]
        cells.append(shown(row.dest))
        if wide:
            cells.append(shown(row.via))
        sessions.add_row(*cells, human(row.up), human(row.down), f"{row.age:.0f}s")
    users = Table(expand=True, show_edge=False, pad_edge=False)
    for name in ("user", "sessions", "up", "down", "rate/s"):
        users.add_column(name, justify="left" if name == "user" else "right", no_wrap=True)
    for user, n, up, down, rate in view.users[:5]:
        users.add_row(shown(user), str(n), human(up), human(down), human(rate))
    return Group(title, sessions, Text(""), users)


def fetch(url: str, token: str | None, timeout: float = 5.0) -> Any:
    """GET url (JSON), bounded; raises one of FETCH_ERRORS on failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (an operator's own URL)
        body = response.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError("/sessions answer is too large")
    return json.loads(body)


@contextmanager
def _keys() -> Iterator[bool]:
    """Single key presses from the terminal (cbreak), restored on exit; False if stdin is no tty."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(seconds: float, interactive: bool) -> bool:
    """Sleep up to ``seconds``; True when 'q' was pressed or the terminal is gone."""
    if not interactive:
        time.sleep(seconds)
        return False
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if not ready:
            continue
        try:
            key = os.read(sys.stdin.fileno(), 1)
        except OSError:  # EIO: the terminal hung up
            key = b""
        if key in (b"q", b"Q", b""):  # end of input would be ready at once, forever
            return True
    return False


def admin_url(addr: str) -> str:
    """``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or a URL -> the base URL of the admin listener."""
    if addr.startswith(("http://", "https://")):
        return addr.rstrip("/")
    hostport = f"127.0.0.1:{addr}" if ascii_digits(addr) else addr
    host, sep, port = hostport.rpartition(":")
    if not sep or not ascii_digits(port) or not 0 < int(port) <= 65535 or not host:
        raise ValueError(f"{addr!r} is not PORT, HOST:PORT or [IPV6]:PORT (a port from 1 to 65535)")
    return f"http://{hostport}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, instead of argparse's usage dump."""
        self.exit(2, f"gproxy top: {message} (see gproxy top --help)\n")


def interval(text: str) -> float:
    """``--interval``: seconds, a finite number from MIN_INTERVAL to MAX_INTERVAL."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:  # also refuses nan
        raise argparse.ArgumentTypeError(f"takes seconds from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}, not {text!r}")
    return seconds


def main(argv: Sequence[str]) -> int:
    """``gproxy top [ADDR] [--token T] [--interval S] [--once]``; returns the exit code."""
    parser = _Parser(prog="gproxy top", description="live view of a gproxy --admin listener")
    parser.add_argument("addr", nargs="?", default=DEFAULT_ADMIN, help=f"admin listener (default {DEFAULT_ADMIN})")
    parser.add_argument("--token", default=os.environ.get("GPROXY_ADMIN_TOKEN"), help="bearer token (--admin-token)")
    parser.add_argument(
        "--interval",
        type=interval,
        default=1.0,
        help=f"seconds between refreshes, {MIN_INTERVAL:g} to {MAX_INTERVAL:g} (default 1)",
    )
    parser.add_argument("--once", action="store_true", help="print one screen and exit (no terminal needed)")
    args = parser.parse_args(argv)
    try:
        base = admin_url(args.addr)
    except ValueError as exc:
        print(f"gproxy top: {exc}", file=sys.stderr)
        return 2
    if not args.once and not sys.stdout.isatty():
        print("gproxy top: the live view needs a terminal; --once prints one screen anywhere", file=sys.stderr)
        return 2
    try:
        return _show(base, args.token, args.interval, once=args.once)
    except KeyboardInterrupt:  # Ctrl-C: as good as q, but the shell learns it was SIGINT
        return 128 + signal.SIGINT


def _show(base: str, token: str | None, refresh_seconds: float, *, once: bool) -> int:
    """One screen (``once``), or the live view until q."""
    url = base + "/sessions"
    try:
        payload = fetch(url, token)
    except FETCH_ERRORS as exc:
        print(f"gproxy top: cannot read {url}: {_reason(exc)}", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.live import Live

    console = Console()
    previous: dict[str, int] = {}
    last = time.monotonic()
    view = build_view(parse_sessions(payload), previous, 0.0)
    if once:
        console.print(render(view, base, console.size.width, console.size.height))
        return 0
    with _keys() as interactive, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            previous = {row.id: row.up + row.down for row in view.rows}
            live.update(render(view, base, console.size.width, console.size.height), refresh=True)
            if _wait_for_quit(refresh_seconds, interactive):
                return 0
            now = time.monotonic()
            try:
                rows = parse_sessions(fetch(url, token))
                view = build_view(rows, previous, now - last)
            except FETCH_ERRORS as exc:
                view.error = _reason(exc)
            last = now


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, http.client.HTTPException):  # its text would be what the other side sent
        return f"not an HTTP answer ({type(exc).__name__})"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)
