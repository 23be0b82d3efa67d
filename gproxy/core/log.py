"""Diagnostics on stderr, the "listening" lines, and the access-log writer."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

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


class AccessLog:
    """One line per finished session to a file (append) or stdout (``-``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.path == "-":
            return sys.stdout
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, ACCESS_LOG_MODE)
        return open(fd, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, line: str) -> None:
        try:
            self._file.write(line + "\n")
            if self._file is sys.stdout:
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
        old, self._file = self._file, new
        old.close()
        return True

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()
