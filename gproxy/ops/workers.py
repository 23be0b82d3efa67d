"""``--workers N``: a supervisor and N worker processes sharing ports (SO_REUSEPORT).

The supervisor is a plain process (never monkey-patched, no hub serving
anything). It binds every listener first, so a bad address is exit 2 before
any worker starts, and keeps holding the ports: TCP ports bound but not
listening (the kernel hands connections only to listening sockets), which
also fixes a ``:0`` port to one number every worker then binds.

Workers are started with ``subprocess`` (a fresh ``python -P -m
gproxy.ops.workers``), not ``fork``: forking a process that has a gevent hub,
its libev loop and resolver threads needs ``gevent.reinit`` and careful
ordering, and a restarted worker would inherit whatever state the parent
had. A fresh interpreter is patched first and starts clean every time. The
worker's settings arrive pickled on stdin; stdin stays open, and its EOF
tells a worker that the supervisor is gone. A worker writes one byte to a
pipe once it serves; then, and only once, the supervisor prints the
"listening" lines. ``-P`` and a PYTHONPATH of absolute directories only
keep the current directory off the worker's ``sys.path``: started from a
directory others can write to, a planted ``gevent/`` or ``h11.py`` must not
run as gproxy's user.

``--admin`` with workers: every worker binds the public admin port too (like
every other port) and serves its own sessions on ``INDEX.sock`` in a private
0700 directory the supervisor makes; whichever worker the kernel hands a
request to asks the others there and joins their JSON arrays, and routes
``DELETE /sessions/INDEX-N`` to worker INDEX. The supervisor serves nothing.

``--ss`` with workers: the supervisor makes the Shadowsocks replay filter (a memfd, see
``gproxy.core.salt_filter``) and passes its descriptor to every worker, so a salt one worker
has seen is refused by all, and a restarted worker keeps the history.

Signals: SIGTERM/SIGINT are passed on (workers drain, the supervisor exits 0
when all have exited; a second one, passed on too, ends their sessions at
once). Workers run in their own process group, so a terminal's Ctrl-C
reaches the supervisor alone and counts once. SIGHUP re-reads the settings, and only if they are
valid is it passed on (so a broken file logs one error, not one per
worker). A worker that dies is restarted, after a delay that doubles while
workers keep dying young, so a crash loop does not spin. A worker starts
with SIGTERM, SIGINT and SIGHUP blocked (the supervisor blocks them around
the spawn; the mask survives exec) and unblocks them once it can handle
them: a SIGHUP sent to a worker that is still importing waits, it does not
kill it. Under systemd the supervisor is the main PID and the only process
that talks to ``NOTIFY_SOCKET`` (READY once every worker serves, the
watchdog from its loop); workers never see it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gproxy.core.config import Config, ListenerSpec
from gproxy.core.errors import ConfigError
from gproxy.core.log import announce, logger, setup_logging
from gproxy.core.salt_filter import SaltFilter
from gproxy.ops.notify import Notifier

if TYPE_CHECKING:
    from gproxy.ops.runtime import StartSignals

START_TIMEOUT = 30.0
MIN_BACKOFF = 0.1
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 10.0  # a worker that lived this long resets the backoff
EXIT_GRACE = 5.0  # beyond --drain-timeout, before a stuck worker is killed


@dataclass
class _Slot:
    """One worker position; its process is replaced when it dies."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    announced: bool = False


@dataclass
class Supervisor:
    config: Config  # listeners with the ports actually bound
    argv: Sequence[str]
    slots: list[_Slot] = field(default_factory=list)
    stopping: bool = False
    metrics_dir: str | None = None
    admin_dir: str | None = None  # --admin: the workers' private admin sockets (a 0700 directory)
    salts: SaltFilter | None = None  # --ss: the replay filter every worker shares
    restarts: Any = None  # prometheus Counter when --metrics is on
    stop_deadline: float = 0.0
    notifier: Notifier = field(default_factory=lambda: Notifier({}))  # systemd hears from the supervisor only
    _pending: list[int] = field(default_factory=list)

    # -- worker processes -------------------------------------------------------

    def spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        salts_fd = self.salts.fd if self.salts is not None else None
        payload = pickle.dumps((self.config, list(self.argv), write_fd, slot.index, self.admin_dir, salts_fd))
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)  # the worker inherits the mask
        try:
            slot.proc = subprocess.Popen(
                worker_command(),
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,) if salts_fd is None else (write_fd, salts_fd),
                env=worker_env(),
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only, which passes it on once
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(write_fd)
        assert slot.proc.stdin is not None
        slot.proc.stdin.write(len(payload).to_bytes(8, "big") + payload)
        slot.proc.stdin.flush()
        slot.ready_fd = read_fd
        slot.started = time.monotonic()
        slot.restart_at = None
        logger.debug("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def wait_ready(self) -> bool:
        """Wait until every first worker serves; False if one failed to start."""
        deadline = time.monotonic() + START_TIMEOUT
        while any(not slot.announced for slot in self.slots):
            for slot in self.slots:
                if not slot.announced and slot.proc is not None and slot.proc.poll() is not None:
                    return False
            fds = [slot.ready_fd for slot in self.slots if not slot.announced and slot.ready_fd is not None]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.error("workers did not start within %.0f seconds", START_TIMEOUT)
                return False
            readable, _, _ = select.select(fds, [], [], min(remaining, 0.2))
            for slot in self.slots:
                if slot.ready_fd in readable:
                    slot.announced = bool(os.read(slot.ready_fd, 1))
                    self._close_ready(slot)
        return True

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def reap(self) -> None:
        """Notice dead workers; schedule (or, after their delay, do) restarts."""
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                self._close_ready(slot)
                if proc.stdin is not None:
                    proc.stdin.close()
                self._mark_dead(proc.pid)
                slot.proc = None
                if self.stopping:
                    continue
                lived = now - slot.started
                slot.failures = 0 if lived >= HEALTHY_AFTER else slot.failures + 1
                delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** max(0, slot.failures - 1))
                slot.restart_at = now + delay
                logger.warning(
                    "worker %d (pid %d) %s; restarting in %.1fs", slot.index, proc.pid, _how(proc.returncode), delay
                )
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                self.spawn(slot)
                if self.restarts is not None:
                    self.restarts.inc()

    def _mark_dead(self, pid: int) -> None:
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    # -- signals and the main loop ------------------------------------------------

    def on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)  # handled by the loop, outside the handler

    def handle_signals(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:  # the next one is passed on too: the workers end their sessions at once
                    from gproxy.ops.runtime import draining_line, say

                    workers = sum(s.proc is not None for s in self.slots)
                    say(draining_line(f"sessions of {workers} workers", self.config.drain_timeout))
                    self.notifier.stopping()
                    self.stopping = True
                    self.stop_deadline = time.monotonic() + self.config.drain_timeout + EXIT_GRACE
                self.signal_all(signal.SIGTERM)
            elif signum == signal.SIGHUP:
                self.reload()

    def reload(self) -> None:
        """SIGHUP: valid settings are passed on to every worker, between RELOADING=1 and READY=1."""
        if self.stopping:
            return
        self.notifier.reloading()
        try:
            self._reload()
        finally:
            self.notifier.ready()

    def _reload(self) -> None:
        from gproxy.ops.runtime import reread

        config = reread(self.argv)  # logs the one error line itself
        if config is None:
            return
        from gproxy.server.proxy import checked_users_table, warn_restart_only

        ignored = self.config.needs_restart(config)
        # as each worker will check it: against the listeners still bound, not the file's
        config = self.config.reloaded(config)
        checked = checked_users_table(config)
        if isinstance(checked, ConfigError):
            logger.error("reload failed, keeping the old settings: %s", checked)
            return
        if ignored:
            warn_restart_only(ignored)
        self.config = config
        self.signal_all(signal.SIGHUP)
        logger.info("reloading %d workers", len(self.slots))

    def run(self) -> int:
        while True:
            self.handle_signals()
            self.reap()
            self.notifier.tick()
            if self.stopping:
                if all(slot.proc is None for slot in self.slots):
                    from gproxy.ops.runtime import say

                    say("stopped")
                    return 0
                if time.monotonic() > self.stop_deadline:
                    logger.warning("workers did not stop in time; killing them")
                    self.signal_all(signal.SIGKILL)
            time.sleep(0.05)


#: signals a worker holds (blocked) until it has handlers for them
WORKER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def worker_command() -> list[str]:
    """``python -P -m gproxy.ops.workers``: ``-P`` keeps the current directory off ``sys.path``."""
    return [sys.executable, "-P", "-m", "gproxy.ops.workers"]


#: systemd's notify settings: meant for the supervisor (NotifyAccess=main), never a worker
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment with a PYTHONPATH a worker can trust.

    Without systemd's notify settings (the supervisor speaks for the workers).
    Relative and empty PYTHONPATH entries (an empty one means the current
    directory) are dropped; the directory this gproxy was imported from comes
    first, so a worker runs the same code as its supervisor.
    """
    env = dict(os.environ if environ is None else environ)
    for name in NOTIFY_ENV:
        env.pop(name, None)
    here = str(Path(__file__).resolve().parents[2])  # holds the gproxy package
    entries = [here, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p) and p != here)]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def reserve(config: Config) -> tuple[list[Any], Config]:
    """Bind every listener in this process; the config with the ports actually bound."""
    from gproxy.server.proxy import DATAGRAM_KINDS, bind_listener

    sockets: list[Any] = []
    specs: list[ListenerSpec] = []
    try:
        for spec in config.listeners:
            sock = bind_listener(spec, datagram=spec.kind in DATAGRAM_KINDS, reuse_port=True, listen=False)
            sockets.append(sock)
            specs.append(dataclasses.replace(spec, port=sock.getsockname()[1]))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, dataclasses.replace(config, listeners=tuple(specs))


def supervise(config: Config, argv: Sequence[str], early: StartSignals | None = None) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit code."""
    from gproxy.ops.runtime import raise_fd_limit
    from gproxy.server.proxy import DATAGRAM_KINDS, Proxy, users_table

    setup_logging(config.to_logging_level())
    raise_fd_limit()
    try:
        users_table(config)  # a bad or empty users file: exit 2 here, not once per worker
        sockets, bound = reserve(config)
    except ConfigError as exc:
        print(f"gproxy: {exc}", file=sys.stderr)
        return 2
    sup = Supervisor(bound, argv, notifier=Notifier())
    if any(spec.kind == "metrics" for spec in bound.listeners):
        sup.metrics_dir = tempfile.mkdtemp(prefix="gproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = sup.metrics_dir  # before prometheus_client is imported
        from gproxy.services.metrics import worker_restarts

        sup.restarts = worker_restarts(None)
    if any(spec.kind == "admin" for spec in bound.listeners):
        sup.admin_dir = tempfile.mkdtemp(prefix="gproxy-admin-")  # mode 0700: only gproxy's user reaches them
    if any(spec.kind == "ss" for spec in bound.listeners):
        sup.salts = SaltFilter.create()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, sup.on_signal)
    if early is not None:
        sup._pending.extend(early.received)  # arrived while starting: handled by the main loop
    try:
        sup.slots = [_Slot(index) for index in range(config.workers)]
        for slot in sup.slots:
            sup.spawn(slot)
        if not sup.wait_ready():
            sup.stopping = True
            sup.signal_all(signal.SIGTERM)
            _wait_all(sup, config.drain_timeout + EXIT_GRACE)
            return 2
        for spec, sock in zip(bound.listeners, sockets, strict=True):
            announce(spec.kind, Proxy.address_of(sock))
            if spec.kind in DATAGRAM_KINDS:
                sock.close()  # a bound UDP socket would get its share of datagrams
        sup.notifier.ready()  # every worker serves
        return sup.run()
    finally:
        sup.notifier.close()
        for sock in sockets:
            sock.close()
        for directory in (sup.metrics_dir, sup.admin_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        if sup.salts is not None:
            sup.salts.close()


def _wait_all(sup: Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for slot in sup.slots:
        if slot.proc is not None:
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()


# -- the worker side ------------------------------------------------------------------


def _read_settings() -> tuple[Config, list[str], int, int, str | None, int | None]:
    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                raise SystemExit(1)  # the supervisor went away before we started
            data += chunk
        return data

    size = int.from_bytes(read(8), "big")
    config, argv, ready_fd, index, admin_dir, salts_fd = pickle.loads(read(size))
    return config, argv, ready_fd, index, admin_dir, salts_fd


def worker_main() -> int:
    """One worker: serve the supervisor's listeners until told to stop."""
    from gproxy.ops.runtime import StartSignals

    early = StartSignals()  # record, then let in the signals the supervisor held back
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    config, argv, ready_fd, index, admin_dir, salts_fd = _read_settings()
    from gevent import monkey

    from gproxy.ops.runtime import fast_greenlets

    fast_greenlets()
    monkey.patch_all()
    import gevent
    from gevent.os import make_nonblocking, nb_read

    from gproxy.ops.runtime import ServingSignals, settle_heap
    from gproxy.server.proxy import Proxy, WorkerSlot

    setup_logging(config.to_logging_level())
    if salts_fd is not None:  # --ss: the supervisor's replay filter, shared with the other workers
        from gproxy.core.ss_keys import use_salt_filter

        os.set_inheritable(salts_fd, False)
        use_salt_filter(SaltFilter(salts_fd))
    proxy = Proxy(config, reuse_port=True, announce=False)
    if admin_dir is not None:  # --admin: session ids INDEX-N, and a private socket the other workers ask
        proxy.worker = WorkerSlot(index, admin_dir)
    try:
        proxy.start()
    except ConfigError as exc:
        print(f"gproxy: worker {os.getpid()}: {exc}", file=sys.stderr)
        proxy.stop(0)
        return 2
    serving = ServingSignals(proxy, argv, Notifier(), visible=False)  # a no-op Notifier: see worker_env
    serving.install()
    early.replay(serving)
    os.write(ready_fd, b"R")
    os.close(ready_fd)

    def orphaned() -> None:
        make_nonblocking(0)
        while nb_read(0, 4096):
            pass
        logger.warning("worker %d: the supervisor is gone; stopping", os.getpid())
        proxy.stop()

    gevent.spawn(orphaned)
    settle_heap()
    proxy.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
