"""Diagnostics on stderr, the "listening" lines, and the access-log writer."""

from __future__ import annotations

import logging
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


class AccessLog:
    """One line per finished session to a file (append) or stdout (``-``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.path == "-":
            return sys.stdout
        return open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, line: str) -> None:
        try:
            self._file.write(line + "\n")
            if self._file is sys.stdout:
                self._file.flush()
        except (OSError, ValueError) as exc:
            logger.warning("access log %s: %s", self.path, exc)

    def reopen(self) -> None:
        """For log rotation (SIGHUP): close and open the path again."""
        if self.path == "-":
            return
        old, self._file = self._file, self._open()
        old.close()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()
