"""The command line: flags and config file -> Config -> Proxy, with exit codes.

Exit 0 after a clean stop, 2 with one line on stderr for a user's mistake.
Signals are caught from the first line of ``main``: one that arrives while
gproxy starts is acted on once it serves, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
    early = StartSignals()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:
        from gproxy.ops.top import main as top

        return top(argv[1:])
    if argv[:1] == ["passwd"]:
        from gproxy.ops.passwd import main as passwd

        return passwd(argv[1:])
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
