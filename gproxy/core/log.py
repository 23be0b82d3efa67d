"""Diagnostics on stderr, the "listening" lines, and the access-log writer."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from gevent.hub import get_hub

logger = logging.getLogger("gproxy")


def setup_logging(level: int) -> None:
    """Send gproxy's log records to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gproxy: %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def announce(kind: str, address: str) -> None:
    """The contract's start-up line: ``gproxy: listening socks5 127.0.0.1:1080``."""
    print(f"gproxy: listening {kind} {address}", file=sys.stderr, flush=True)


#: a new access log is readable by its owner and group only: it names users and clients
ACCESS_LOG_MODE = 0o640
#: the access log's write buffer: a loop iteration's lines go out in one write()
_BATCH_BUFFER = 1 << 16


class AccessLog:
    """One line per finished session to a file (append) or stdout (``-``).

    Lines are gathered and written together when the event loop runs its callbacks,
    before it waits again: one write() per loop iteration instead of one per line
    (a write to a file blocks every connection of the process while it lasts), and
    no line waits for a timer: an idle proxy has written every line it made.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = self._open()
        self._pending: list[str] = []

    def _open(self) -> TextIO:
        if self.path == "-":
            return sys.stdout
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, ACCESS_LOG_MODE)
        return open(fd, "a", encoding="utf-8", buffering=_BATCH_BUFFER)  # noqa: SIM115

    def write(self, line: str) -> None:
        """Queue ``line``; it is written with the others of this loop iteration (flush())."""
        if not self._pending:
            get_hub().loop.run_callback(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        """Write the queued lines now, in one write() (whole lines: O_APPEND keeps each
        worker's batch in one piece)."""
        if not self._pending:
            return
        batch = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self._file.write(batch)
            self._file.flush()
        except (OSError, ValueError) as exc:
            logger.warning("access log %s: %s", self.path, exc)

    def reopen(self) -> bool:
        """For log rotation (SIGHUP): close and open the path again.

        Fails soft: if the path cannot be opened now (its directory moved, a
        directory or an unwritable file in its place), logs one error and keeps
        writing to the old file. A reload never stops the proxy.
        """
        if self.path == "-":
            return True
        try:
            new = self._open()
        except OSError as exc:
            logger.error("access log %s: cannot reopen (%s); still writing to the old file", self.path, exc.strerror)
            return False
        self.flush()  # what came before the rotation goes to the old file
        old, self._file = self._file, new
        old.close()
        return True

    def close(self) -> None:
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()
