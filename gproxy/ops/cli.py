"""The command line: flags and config file -> Config -> Proxy, with exit codes.

Exit 0 after a clean stop, 2 with one line on stderr for a user's mistake.
For the server, signals are caught as soon as ``main`` knows it is not a
subcommand: one that arrives while gproxy starts is acted on once it serves,
never a traceback. ``gproxy top`` and ``gproxy passwd`` end on Ctrl-C, SIGTERM
and SIGHUP (``subcommand_signals``).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from gproxy.core.config import Config
from gproxy.core.errors import ConfigError
from gproxy.ops.notify import Notifier
from gproxy.ops.runtime import (
    ServingSignals,
    StartSignals,
    fast_greenlets,
    load_config,
    raise_fd_limit,
    say,
    settle_heap,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run gproxy; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:
        from gproxy.ops.top import main as top

        subcommand_signals()
        return top(argv[1:])
    if argv[:1] == ["passwd"]:
        from gproxy.ops.passwd import main as passwd

        subcommand_signals()
        return passwd(argv[1:])
    early = StartSignals()  # the server's: after the subcommands, which would ignore Ctrl-C with it
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"gproxy: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from gproxy.ops.workers import supervise

        return supervise(config, argv, early)  # a plain process: the workers run gevent
    from gevent import monkey

    fast_greenlets()
    monkey.patch_all()
    return run(config, argv, early)


def subcommand_signals() -> None:
    """For ``top`` and ``passwd``: Python's own SIGINT (KeyboardInterrupt; each exits 130);
    SIGTERM and SIGHUP (the terminal went away) raise ``SystemExit(128 + signal)``, so the
    way out restores the terminal (top's screen and keys, the prompt's echo) and removes a
    half-written users file."""

    def unwind(signum: int, _frame: object) -> NoReturn:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:  # one ignored by the parent stays so
            signal.signal(signum, unwind)


def run(config: Config, argv: Sequence[str] | None = None, early: StartSignals | None = None) -> int:
    from gproxy.core.log import setup_logging
    from gproxy.server.proxy import Proxy

    early = early or StartSignals()
    setup_logging(config.to_logging_level())
    raise_fd_limit()
    proxy = None
    try:
        proxy = Proxy(config)
        proxy.start()
    except ConfigError as exc:
        print(f"gproxy: {exc}", file=sys.stderr)
        if proxy is not None:
            proxy.stop(0)
        return 2
    notifier = Notifier()
    serving = ServingSignals(proxy, argv, notifier)
    serving.install()
    notifier.ready()  # every listener listens (and was announced)
    notifier.start_watchdog()
    early.replay(serving)
    settle_heap()
    proxy.serve_forever()
    notifier.close()
    say("stopped")
    return 0
