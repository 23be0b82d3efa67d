"""The record of one client session and its access-log line (logfmt)."""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gproxy.core.addr import Address
from gproxy.core.errors import Outcome

if TYPE_CHECKING:
    from gproxy.core.access import UserSlot
    from gproxy.core.relay import RelayStats

#: printable ASCII but space, quote, equals and backslash: safe unquoted
_BARE = re.compile(r"[!#-<>-\[\]-~]+")
#: the most characters of one value a line carries (a user name, a host name...), before escaping
MAX_FIELD = 256


@dataclass(slots=True)
class Session:
    """Filled in by the front end as the session goes; logged when it ends."""

    client: Address
    listener: str
    proto: str = "-"
    user: str | None = None  # once authenticated (or the Shadowsocks key's owner)
    #: the name a client gave that failed authentication: the access log's user=, never /sessions
    user_tried: str | None = None
    cmd: str = "-"
    dest: str = "-"
    up: int = 0
    down: int = 0
    outcome: Outcome = Outcome.OK
    started: float = field(default_factory=time.monotonic)
    via: str | None = None  # the upstream dialled through, or "direct"; None: no dial
    #: HTTP: the status the client got (the origin's, or gproxy's own answer)
    status: int | None = None
    #: (up, down) of the earlier requests on this HTTP connection, each already logged
    logged: tuple[int, int] = (0, 0)
    #: every request so far has its line: nothing left for the end of the connection
    quiet: bool = False
    user_slot: UserSlot | None = None  # counts this session against its user's limit; released at the end
    #: what the server counted this connection under (--max-conns, --max-conns-per-ip); released at the end
    admission: tuple[list[str], bool] | None = None
    id: str = ""  # the server's name for it while it is open (--admin: /sessions, DELETE /sessions/ID)
    #: the running tunnel's own counters (the relay counts per chunk): bytes not yet in up/down
    live: RelayStats | None = None

    def live_bytes(self) -> tuple[int, int]:
        """(up, down) so far, the running tunnel's bytes included: read, never counted twice."""
        live = self.live
        if live is None:
            return self.up, self.down
        return self.up + live.up, self.down + live.down

    def logfmt(self) -> str:
        """``ts= client= user= proto= cmd= dest= [via=] [status=] up= down= dur= outcome=``

        ``up``/``down`` count since the last logged request; every value that may come from
        a client or the config is capped at MAX_FIELD and quoted when not bare. One
        f-string, the timestamp's second formatted once per second: one line per
        forwarded request costs a few microseconds, not a tenth of the request.
        """
        via = "" if self.via is None else f" via={_quote(self.via)}"
        status = "" if self.status is None else f" status={self.status}"
        return (  # client (an address from the kernel or a checked PROXY header) and proto (ours) need no quoting
            f"ts={_TIMESTAMPS.now()} client={self.client} user={_quote(self.user or self.user_tried or '-')}"
            f" proto={self.proto} cmd={_quote(self.cmd)} dest={_quote(self.dest)}{via}{status}"
            f" up={self.up - self.logged[0]} down={self.down - self.logged[1]}"
            f" dur={time.monotonic() - self.started:.3f} outcome={self.outcome}"
        )

    def request_logged(self) -> None:
        """The current HTTP request has its line; the connection may end without another."""
        self.logged = (self.up, self.down)
        self.quiet = True

    def next_request(self) -> None:
        """The next HTTP request on the connection began: its record starts afresh."""
        self.user, self.cmd, self.dest, self.status, self.outcome, self.via = None, "-", "-", None, Outcome.OK, None
        self.user_tried = None
        self.started = time.monotonic()
        self.quiet = False


def _quote(value: str) -> str:
    """``value`` (its first MAX_FIELD characters) as logfmt writes it: bare when it can be."""
    return _quote_capped(value[:MAX_FIELD])


@functools.lru_cache(maxsize=1024)
def _quote_capped(value: str) -> str:
    """Cached: the same users, destinations and routes come back line after line, and the
    lookup costs less than the regular expression (keys already capped: at most 1,024
    values of MAX_FIELD characters, whatever clients send)."""
    if value and _BARE.fullmatch(value):
        return value
    return json.dumps(value)  # quotes, and escapes control characters


class _Timestamps:
    """UTC times to the millisecond (``2026-11-30T04:03:05.859Z``); the part up to the
    second is formatted once per second (``datetime.now(UTC).strftime`` per line cost
    more than the rest of the line)."""

    __slots__ = ("second", "prefix")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def now(self) -> str:
        # whole microseconds first, rounded as datetime does, then truncated to the millisecond
        second, micro = divmod(round(time.time() * 1_000_000), 1_000_000)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self.prefix}{micro // 1000:03d}Z"


_TIMESTAMPS = _Timestamps()
