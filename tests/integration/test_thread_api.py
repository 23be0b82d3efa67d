"""gproxy.serve_in_thread: a proxy on a private thread, from unpatched and patched programs."""

import socket
import subprocess
import sys
import textwrap

import pytest
import socks

from gproxy import Config, ConfigError, serve_in_thread
from gproxy.ops.threaded import ProxyThread
from tests.helpers import HELLO_HANDLER_SOURCE, ROOT, gproxy_env, pysocks_echo

#: an ordinary program: no monkey-patching, real threads, requests and socket
UNPATCHED_SCRIPT = textwrap.dedent(
    """
    import http.server, os, socket, sys, threading
    import requests
    from gevent import monkey
    import gproxy

    HELLO_HANDLER

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    proxy = gproxy.serve_in_thread(gproxy.Config.build(socks=["127.0.0.1:0"], user=["u:p@ss"]))
    assert proxy.url().startswith("socks5h://u:p%40ss@127.0.0.1:"), proxy.url()
    for i in range(3):
        reply = requests.get(f"http://127.0.0.1:{web.server_port}/{i}", proxies={"http": proxy.url()}, timeout=10)
        assert reply.text == f"hello /{i}", reply.text
    try:
        requests.get(f"http://127.0.0.1:{web.server_port}/", proxies={"http": proxy.url(user=("u", "bad"))}, timeout=10)
    except requests.exceptions.ConnectionError:
        pass
    else:
        raise AssertionError("a wrong password got through")

    address = proxy.address("socks5")
    held = socket.create_connection((address.host, address.port), timeout=10)  # an open session
    proxy.stop()  # from the main thread; closes the held session too
    proxy.stop()  # idempotent
    assert not proxy.running
    try:
        assert held.recv(1) == b""
    except ConnectionResetError:
        pass
    try:
        socket.create_connection((address.host, address.port), timeout=10)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("still listening after stop()")
    assert not monkey.is_module_patched("socket")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(10):  # each thread's hub and its loop are destroyed with it
        gproxy.serve_in_thread(socks=["127.0.0.1:0"]).stop()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert [t.name for t in threading.enumerate() if t.name == "gproxy"] == []
    print("OK")
    """
).replace("HELLO_HANDLER\n", HELLO_HANDLER_SOURCE)


def run_program(tmp_path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as an ordinary (unpatched) program; it must print OK and exit 0."""
    script = tmp_path / "app.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)], env=gproxy_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
    return done


def test_unpatched_program_uses_a_proxy_thread(tmp_path):
    done = run_program(tmp_path, UNPATCHED_SCRIPT)
    assert "gproxy: listening socks5 127.0.0.1:" in done.stderr


#: runs of a proxy thread, each with a tunnel that ends, leave no hub (nor what it holds) behind
NO_HUB_LEFT_SCRIPT = textwrap.dedent(
    """
    import gc, socket
    from gevent.hub import Hub
    import gproxy
    from gproxy.server.proxy import Proxy

    kept = []  # ProxyThread objects a program keeps after stop(): they must not keep the hub

    def one_run(echo):
        with gproxy.serve_in_thread(socks=["127.0.0.1:0"]) as proxy:
            kept.append(proxy)
            address = proxy.address("socks5")
            client = socket.create_connection((address.host, address.port), timeout=10)
            client.sendall(b"\\x05\\x01\\x00")
            assert client.recv(2) == b"\\x05\\x00"
            client.sendall(b"\\x05\\x01\\x00\\x03\\x09localhost" + echo.getsockname()[1].to_bytes(2, "big"))
            assert client.recv(10)[:2] == b"\\x05\\x00"
            served, _ = echo.accept()
            client.close()
            assert served.recv(1) == b""  # the tunnel ended inside the proxy's hub
            served.close()
            # the tunnel's record (later.call_soon) may have run or still be queued at stop():
            # either way nothing may be left

    with socket.create_server(("127.0.0.1", 0)) as echo:
        for _ in range(3):
            one_run(echo)
    gc.collect()
    left = [type(o).__name__ for o in gc.get_objects() if isinstance(o, (Hub, Proxy))]
    assert left == [], left
    print("OK")
    """
)


def test_proxy_threads_leave_no_hub_behind(tmp_path):
    """A hub's greenlet left suspended in a dead thread is never collected (nor the Proxy
    its frames reach): each run must end it, and the greenlets parked in it."""
    run_program(tmp_path, NO_HUB_LEFT_SCRIPT)


def test_in_a_patched_program_it_runs_in_the_same_hub(echo_tcp):
    with serve_in_thread(socks=["127.0.0.1:0"], user=["u:p"]) as proxy:
        address = proxy.address("socks5")
        pysocks_echo(
            socks.SOCKS5,
            (address.host, address.port),
            (echo_tcp.host, echo_tcp.port),
            b"ping",
            username="u",
            password="p",
        )
    assert not proxy.running


def test_a_stop_that_arrives_after_the_thread_ended_does_nothing():
    """What a second stop() from another thread hands to the hub when it comes as the first
    one ends the thread: the proxy and its hub are gone by then, and nothing may fail."""
    proxy = serve_in_thread(socks=["127.0.0.1:0"])
    stop_in_hub = proxy._stop_in_hub  # what stop() schedules in the proxy's hub
    proxy.stop()
    assert not proxy.running
    stop_in_hub(0)  # the proxy and its Event were dropped as the thread ended: no AttributeError on None
    proxy.stop()  # idempotent


def test_bind_error_is_raised_in_the_caller():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            serve_in_thread(Config.build(socks=[f"127.0.0.1:{port}"]))
    finally:
        taken.close()


def test_any_failure_in_the_thread_is_raised_at_once(monkeypatch):
    """Not only start()'s errors: a failure before it (an import, the constructor) reaches the
    caller as itself, not as a timeout after 30 seconds."""

    class Broken:
        def __init__(self, config):
            raise RuntimeError("broken before start")

    monkeypatch.setattr("gproxy.server.proxy.Proxy", Broken)
    with pytest.raises(RuntimeError, match="broken before start"):
        ProxyThread(Config.build(socks=["127.0.0.1:0"])).start(timeout=10)


def test_config_and_settings_are_exclusive():
    with pytest.raises(TypeError):
        serve_in_thread(Config.build(socks=["127.0.0.1:0"]), user=["u:p"])


def test_package_import_does_not_patch():
    code = "import gproxy, gproxy.pytest_plugin; from gevent import monkey; print(monkey.is_module_patched('socket'))"
    done = subprocess.run([sys.executable, "-c", code], env=gproxy_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
