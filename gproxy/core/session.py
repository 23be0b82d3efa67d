"""The record of one client session and its access-log line (logfmt)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gproxy.core.addr import Address

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

    def logfmt(self) -> str:
        """``ts=... client=... user=... proto=... cmd=... dest=... up= down= dur= outcome=``"""
        now = datetime.now(UTC)
        ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        pairs = (
            ("ts", ts),
            ("client", str(self.client)),
            ("user", self.user or "-"),
            ("proto", self.proto),
            ("cmd", self.cmd),
            ("dest", self.dest),
            ("up", str(self.up)),
            ("down", str(self.down)),
            ("dur", f"{time.monotonic() - self.started:.3f}"),
            ("outcome", self.outcome),
        )
        return " ".join(f"{key}={_quote(value)}" for key, value in pairs)


def _quote(value: str) -> str:
    if value and _BARE.fullmatch(value):
        return value
    return json.dumps(value)  # quotes, and escapes control characters
