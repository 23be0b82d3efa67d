"""The accept loop: a StreamServer that survives running out of file descriptors.

gevent's StreamServer prints a traceback for every failed accept. Under
EMFILE/ENFILE this one logs one line per episode, backs off (doubling, up to
a second) and recovers on its own. Like nginx and libev it keeps one spare
descriptor: when accept fails for lack of descriptors it frees the spare,
accepts the waiting client and closes it at once, so the client sees a clean
close instead of hanging in the listen backlog.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from gevent import monkey
from gevent.server import StreamServer

from gproxy.core._gevent import accept_fd, retry_accepting_later
from gproxy.core.log import logger

OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: the real close(2): gevent's patched os.close defers closing to the next loop
#: turn, and the descriptor must be free before the accept that follows
_close = monkey.get_original("os", "close")
MIN_DELAY = 0.05
MAX_DELAY = 1.0


class _Reserve:
    """One spare descriptor per process, given up to shed a client."""

    fd: int | None = None

    @classmethod
    def ensure(cls) -> None:
        if cls.fd is None:
            with contextlib.suppress(OSError):  # still out of descriptors: try again next time
                cls.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def release(cls) -> None:
        if cls.fd is not None:
            _close(cls.fd)
            cls.fd = None


class Acceptor(StreamServer):  # type: ignore[misc]
    """StreamServer with descriptor-exhaustion handling; ``on_shed()`` counts shed clients.

    A client socket is closed when its handler returns, as StreamServer does; a
    tunnel that goes on without the handler has taken the descriptor over
    (``socket.detach()``), so that close no longer touches it.
    """

    def __init__(self, *args: Any, on_shed: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_shed = on_shed
        self._fd_delay = 0.0

    def start_accepting(self) -> None:
        _Reserve.ensure()
        super().start_accepting()

    def do_read(self) -> Any:
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_FDS:
                raise
            self._out_of_fds(exc)
            return None
        if accepted and self._fd_delay:
            logger.info("accepting again on %s", self._where())
            self._fd_delay = 0.0
        return accepted

    def _out_of_fds(self, exc: OSError) -> None:
        if not self._fd_delay:
            logger.warning("%s on %s: refusing new clients until descriptors free up", exc.strerror, self._where())
        self._fd_delay = min(MAX_DELAY, max(MIN_DELAY, self._fd_delay * 2))
        self._shed()
        self.stop_accepting()
        retry_accepting_later(self, self._fd_delay)

    def _shed(self) -> None:
        """Free the spare descriptor, accept one waiting client, close it, take the spare back."""
        _Reserve.release()
        try:
            fd = accept_fd(self.socket)
        except OSError:
            pass
        else:
            _close(fd)  # the client sees EOF now, not a timeout later
            if self._on_shed is not None:
                self._on_shed()
        _Reserve.ensure()

    def _where(self) -> str:
        try:
            host, port = self.socket.getsockname()[:2]
        except OSError:
            return "a listener"
        return f"{host}:{port}"
