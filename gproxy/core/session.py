"""The record of one client session and its access-log line (logfmt)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from gproxy.core.addr import Address

if TYPE_CHECKING:
    from gproxy.core.access import UserSlot
    from gproxy.core.stream import Conn

#: printable ASCII but space, quote, equals and backslash: safe unquoted
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


@dataclass(slots=True)
class Session:
    """Filled in by the front end as the session goes; logged when it ends."""

    client: Address
    listener: str
    proto: str = "-"
    user: str | None = None
    cmd: str = "-"
    dest: str = "-"
    up: int = 0
    down: int = 0
    outcome: str = "ok"
    started: float = field(default_factory=time.monotonic)
    via: str | None = None  # the upstream dialled through, or "direct"; None: no dial
    user_slot: UserSlot | None = None  # counts this session against its user's limit; released at the end

    def logfmt(self) -> str:
        """``ts=... client=... user=... proto=... cmd=... dest=... [via=] up= down= dur= outcome=``"""
        now = datetime.now(UTC)
        ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        via = () if self.via is None else (("via", self.via),)
        pairs = (
            ("ts", ts),
            ("client", str(self.client)),
            ("user", self.user or "-"),
            ("proto", self.proto),
            ("cmd", self.cmd),
            ("dest", self.dest),
            *via,
            ("up", str(self.up)),
            ("down", str(self.down)),
            ("dur", f"{time.monotonic() - self.started:.3f}"),
            ("outcome", self.outcome),
        )
        return " ".join(f"{key}={_quote(value)}" for key, value in pairs)


class SessionOwner(Protocol):
    """The server side of a session that outlives its greenlet (a tunnel on the event loop)."""

    def detach(self, conn: Conn, abort: Callable[[str], None]) -> None:
        """The handler returns while the tunnel runs: keep the client open; ``abort(outcome)`` ends it early."""

    def end_detached(self, session: Session, conn: Conn) -> None:
        """The tunnel is done (its record is complete): close the client, count and log the session."""


def _quote(value: str) -> str:
    if value and _BARE.fullmatch(value):
        return value
    return json.dumps(value)  # quotes, and escapes control characters
