"""What a running gproxy process shares, supervisor or worker: reading the settings from
flags and --config (at start and on SIGHUP), the stop/reload signals, the fd limit, greenlet
tuning and the operator's lines on stderr. Imported by ``cli`` and ``workers``, never the
other way round.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from gproxy import __version__
from gproxy.core.config import OPTIONS, Config, load_toml
from gproxy.core.errors import ConfigError
from gproxy.ops.notify import Notifier


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, instead of argparse's usage dump."""
        self.exit(2, f"gproxy: {message} (see gproxy --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gproxy",
        description="SOCKS4/4a/5 and HTTP proxy, TCP and UDP forwarder, on gevent.",
        epilog="gproxy passwd FILE USER writes a bcrypt password hash into a users file (see gproxy passwd --help).",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the file
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same settings as the flags")
    for option in OPTIONS:
        flag = f"--{option.key}"
        default_note = f" (default {option.default})" if option.default not in (None, False) else ""
        if option.kind is bool:
            parser.add_argument(flag, action="store_true", help=option.help)
        elif option.repeat:
            parser.add_argument(flag, action="append", metavar=option.metavar, help=option.help)
        else:
            parser.add_argument(
                flag, type=_typed(option.kind, flag), metavar=option.metavar, help=option.help + default_note
            )
    parser.add_argument("-v", "--verbose", action="store_const", const="debug", dest="log-level", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_const", const="error", dest="log-level", help="errors only")
    parser.add_argument("--version", action="version", version=f"gproxy {__version__}")
    return parser


def _typed(kind: type, flag: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, not {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def load_config(argv: Sequence[str] | None) -> Config:
    """Flags (and the --config file under them) to a validated Config."""
    args = vars(build_parser().parse_args(argv))
    settings: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    path = args.pop("config", None)
    if path is not None:
        settings, extra = load_toml(path)
    settings.update({key.replace("_", "-"): value for key, value in args.items()})
    return Config.from_settings(settings, extra)


class StartSignals:
    """SIGTERM/SIGINT/SIGHUP that arrive while gproxy starts: recorded, then replayed.

    Installed before anything else, so a Ctrl-C during start is no
    KeyboardInterrupt traceback and a SIGHUP (whose default is to kill) is
    not fatal; ``replay`` acts on them once the real handlers are in place.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        for signum in self.SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def replay(self, serving: ServingSignals) -> None:
        """In a serving process: stop if asked to, else reload if asked to."""
        import gevent

        if signal.SIGTERM in self.received or signal.SIGINT in self.received:
            serving.stop()
        elif signal.SIGHUP in self.received:
            gevent.spawn(serving.reload)
        self.received.clear()


class ServingSignals:
    """SIGTERM/SIGINT/SIGHUP in a serving process.

    The first stop signal drains (said on stderr when ``visible``, and to
    systemd); the next ends every session at once. SIGHUP re-reads the flags
    and --config and reloads, between ``RELOADING=1`` and ``READY=1``.
    """

    def __init__(self, proxy: Any, argv: Sequence[str] | None, notifier: Notifier, *, visible: bool = True) -> None:
        self.proxy = proxy
        self.argv = argv
        self.notifier = notifier
        self.visible = visible  # a --workers worker: the supervisor speaks for it
        self.stopping = False

    def install(self) -> None:
        import gevent

        gevent.signal_handler(signal.SIGTERM, self.stop)
        gevent.signal_handler(signal.SIGINT, self.stop)
        gevent.signal_handler(signal.SIGHUP, self.reload)

    def stop(self) -> None:
        import gevent

        if self.stopping:
            self.proxy.stop_now()
            return
        self.stopping = True
        if self.visible:
            say(draining_line(f"{self.proxy.open_sessions} sessions", self.proxy.config.drain_timeout))
        self.notifier.stopping()
        gevent.spawn(self.proxy.stop)

    def reload(self) -> None:
        if self.stopping:  # READY=1 would tell systemd the stop is over
            reload(self.proxy, self.argv)
            return
        self.notifier.reloading()
        try:
            reload(self.proxy, self.argv)
        finally:
            self.notifier.ready()


def say(line: str) -> None:
    """One operator-facing line on stderr (``gproxy: ...``), whatever the log level."""
    print(f"gproxy: {line}", file=sys.stderr, flush=True)


def draining_line(what: str, drain_timeout: float) -> str:
    return f"draining {what} (up to {drain_timeout:g} s; Ctrl-C again to stop now)"


def fast_greenlets() -> None:
    """Spawn greenlets without recording their spawning stack and tree (a stack walk
    per connection); GEVENT_TRACK_GREENLET_TREE=1 turns it back on for debugging."""
    import gevent

    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False


#: objects allocated between two passes over the youngest generation (Python's default: 700)
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once serving: move every object made so far (modules, config, listeners) out of the
    garbage collector's sight, so its full passes scan only what connections create, and
    let the youngest generation grow to GC_YOUNG_THRESHOLD objects before a pass. With
    the default 700, a pass came every ~50 SOCKS5 connections and pushed the objects of
    every connection in flight into the middle generation, whose passes then cost ~0.9 ms
    each: 3.6 us of collection per connection, 1.8 us with 10,000 (gc.callbacks timings
    over 32,000 connections)."""
    import gc

    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def reread(argv: Sequence[str]) -> Config | None:
    """The settings as the flags and the --config file give them now; None after one error line."""
    from gproxy.core.log import logger

    try:
        return load_config(argv)
    except ConfigError as exc:
        logger.error("reload failed, keeping the old settings: %s", exc)
    except Exception as exc:  # a value our checks missed must not end a running server
        logger.debug("reload failed", exc_info=True)
        logger.error("reload failed, keeping the old settings: %s: %s", type(exc).__name__, exc)
    return None


def reload(proxy: Any, argv: Sequence[str] | None) -> None:
    """SIGHUP in a serving process."""
    if argv is None:
        proxy.reload()
        return
    config = reread(argv)
    if config is not None:
        proxy.reload(config)


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one: each tunnel needs two."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
