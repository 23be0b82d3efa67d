"""Regenerate docs/admin.png (the --admin page) and docs/top.txt + docs/top.png (gproxy top).

    python docs/make_screenshots.py

Starts gproxy (--socks, --admin, two users) and a local echo server on
loopback, opens a few tunnels with known byte counts, then takes the page
with headless Chromium and ``gproxy top`` from a tmux pane (``capture-pane
-p``), rendered to PNG by Chromium from an HTML ``<pre>``. Needs chromium and tmux.
"""

from __future__ import annotations

import html
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUNNELS = [(b"alice", 48 << 20), (b"alice", 2 << 20), (b"bob", 700 << 10), (b"carol", 12 << 10), (b"bob", 300)]


def echo_server() -> int:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


def tunnel(proxy_port: int, dest_port: int, user: bytes, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    sock.sendall(b"\x05\x01\x02")
    assert sock.recv(2) == b"\x05\x02"
    sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x02pw")
    assert sock.recv(2) == b"\x01\x00"
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", dest_port))
    assert sock.recv(10)[1] == 0
    block, left = b"x" * (1 << 16), size
    while left:
        chunk = block[: min(left, len(block))]
        sock.sendall(chunk)
        got = 0
        while got < len(chunk):
            got += len(sock.recv(len(chunk) - got))
        left -= len(chunk)
    return sock


def chromium(*args: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is needed")
    subprocess.run([browser, "--headless", "--no-sandbox", "--hide-scrollbars", *args], check=True, capture_output=True)


def main() -> None:
    dest = echo_server()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    users = [arg for name in ("alice", "bob", "carol") for arg in ("--user", f"{name}:pw")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "--admin", "127.0.0.1:0", *users],
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    held = []
    try:
        ports = {}
        assert proc.stderr is not None
        while len(ports) < 2:
            kind, address = proc.stderr.readline().decode().split()[2:4]
            ports[kind] = int(address.rpartition(":")[2])
        held = [tunnel(ports["socks5"], dest, user, size) for user, size in TUNNELS]
        time.sleep(1.5)
        admin = f"127.0.0.1:{ports['admin']}"
        chromium(f"--screenshot={DOCS / 'admin.png'}", "--window-size=1200,700", f"http://{admin}/")
        with tempfile.TemporaryDirectory() as tmp:
            session = f"gproxy-shot-{os.getpid()}"
            subprocess.run(
                ["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "24", "-e", f"PYTHONPATH={ROOT}"]
                + [sys.executable, "-m", "gproxy", "top", admin],
                check=True,
            )
            try:
                time.sleep(3)
                text = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session], check=True, capture_output=True, text=True
                ).stdout
            finally:
                subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            (DOCS / "top.txt").write_text(text.rstrip() + "\n")
            page = Path(tmp) / "top.html"
            page.write_text(
                "<html><body style='margin:0;background:#1e1e1e'><pre style='margin:12px;color:#ddd;"
                f"font:14px DejaVu Sans Mono,monospace'>{html.escape(text.rstrip())}</pre></body></html>"
            )
            chromium(f"--screenshot={DOCS / 'top.png'}", "--window-size=960,480", page.as_uri())
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(30)
    print("wrote docs/admin.png, docs/top.txt, docs/top.png")


if __name__ == "__main__":
    main()
