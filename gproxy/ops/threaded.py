"""A Proxy on a private thread, for ordinary (not monkey-patched) programs and tests.

gevent hubs are per thread: the proxy's thread runs its own hub, and the
calling thread only waits on plain ``threading`` primitives. ``stop()`` hands
the request to that hub with ``loop.run_callback_threadsafe``. In a
monkey-patched program ``threading.Thread`` is a greenlet, and the same code
runs the proxy in a greenlet of the caller's hub.

    proxy = gproxy.serve_in_thread(socks=["127.0.0.1:0"], user=["u:p"])
    requests.get(url, proxies={"https": proxy.url()})
    proxy.stop()
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from gproxy.core.addr import Address, format_hostport
from gproxy.core.config import Config
from gproxy.core.errors import GproxyError

#: listener kind -> URL scheme a client library understands (name resolution on the proxy)
URL_SCHEMES = {"socks5": "socks5h", "mixed": "socks5h", "http": "http", "https": "https"}
#: seconds a stopped proxy's hub may take to run out of work before it is destroyed
JOIN_TIMEOUT = 1.0


class ProxyThread:
    """A started Proxy running on its own thread; see ``serve_in_thread``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.addresses: list[tuple[str, Address]] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: Any = None
        self._proxy: Any = None
        self._stopped: Any = None  # a gevent Event of the proxy's own hub
        self._thread = threading.Thread(target=self._run, name="gproxy", daemon=True)

    def start(self, timeout: float = 30) -> ProxyThread:
        """Start the thread; returns once every listener is bound and serving.

        Raises what ``Proxy.start()`` raises (ConfigError for an address in use).
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"gproxy did not start within {timeout} seconds")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # before ready: handed to the caller by start()
            if self._ready.is_set():
                raise
            self._error = exc
            self._ready.set()

    def _serve(self) -> None:
        import gevent
        from gevent import monkey
        from gevent.event import Event

        from gproxy.server.proxy import Proxy

        own_hub = not monkey.is_module_patched("threading")  # a real thread, not a greenlet
        hub = gevent.get_hub()
        try:
            proxy = Proxy(self.config)
            try:
                proxy.start()
            except BaseException:
                proxy.stop(0)
                raise
            self._stopped = Event()
            self._proxy, self._loop = proxy, hub.loop
            self.addresses = proxy.addresses
            self._ready.set()
            self._stopped.wait()
        finally:
            # what belonged to the hub goes with it: a ProxyThread kept after stop() must not
            # keep the destroyed hub and the Proxy alive
            self._proxy = self._loop = self._stopped = None
            if own_hub:
                _end_hub(hub)

    def _stop_in_hub(self, drain_timeout: float) -> None:
        proxy, stopped = self._proxy, self._stopped
        if proxy is None or stopped is None:  # a second stop() that came as the thread ended
            return
        try:
            proxy.stop(drain_timeout)
        finally:
            stopped.set()

    def stop(self, drain_timeout: float = 0, timeout: float = 30) -> None:
        """Stop accepting, let sessions finish for ``drain_timeout`` seconds, close the rest.

        Safe from any thread; returns once the proxy's thread has ended. Idempotent.
        """
        loop = self._loop  # read once: the proxy's thread drops it as it ends
        if loop is None or not self._thread.is_alive():
            return
        import gevent

        loop.run_callback_threadsafe(gevent.spawn, self._stop_in_hub, drain_timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"gproxy did not stop within {timeout} seconds")

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def address(self, kind: str = "socks5") -> Address:
        """The bound address of the first listener of ``kind``."""
        for listener_kind, address in self.addresses:
            if listener_kind == kind:
                return address
        raise KeyError(kind)

    def url(self, kind: str | None = None, user: tuple[str, str] | None = None) -> str:
        """``socks5h://USER:PASS@HOST:PORT`` (or ``http://...``) with the first configured user.

        ``kind`` defaults to the first listener that has a proxy URL.
        """
        if kind is None:
            kind = next((k for k, _ in self.addresses if k in URL_SCHEMES), "socks5")
        if kind not in URL_SCHEMES:
            raise GproxyError(f"{kind} listeners have no proxy URL")
        if user is None and self.config.users:
            user = self.config.users[0]
        auth = f"{quote(user[0], safe='')}:{quote(user[1], safe='')}@" if user else ""
        address = self.address(kind)
        return f"{URL_SCHEMES[kind]}://{auth}{format_hostport(address.host, address.port)}"

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end_hub(hub: Any) -> None:
    """Destroy this thread's hub so that its greenlet, and every greenlet parked in it,
    really ends: a greenlet of a dead thread left suspended is never collected, and
    would keep the hub and all its frames reach (the Proxy, ~19 KiB a run).

    ``destroy()`` ends the hub's greenlet only if it is parked where its loop ran out
    of work. So first what would switch back into the loop (the resolver, the
    threadpool, each PerHub object's close(): the later.call_soon() runner), then
    ``join()`` until the loop has nothing left (JOIN_TIMEOUT at most: a watcher left
    started keeps it busy, and then the greenlet stays, as before), then destroy.
    """
    from gproxy.core._gevent import end_hub_helpers
    from gproxy.core.per_hub import forget_hub

    end_hub_helpers(hub)
    forget_hub(hub)
    hub.join(timeout=JOIN_TIMEOUT)
    hub.destroy(destroy_loop=True)


def serve_in_thread(config: Config | None = None, /, **settings: Any) -> ProxyThread:
    """Run a Proxy on a private thread: ``serve_in_thread(socks=["127.0.0.1:0"])``.

    Give a Config or the settings ``Config.build`` takes. Returns once listening.
    """
    if config is None:
        config = Config.build(**settings)
    elif settings:
        raise TypeError("give a Config or settings, not both")
    return ProxyThread(config).start()
