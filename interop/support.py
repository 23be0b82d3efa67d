"""The interop suite's machinery: destinations, tool checks, gproxy as a subprocess.

gproxy runs exactly as a user runs it (``python -m gproxy --socks 127.0.0.1:0 ...``),
with its stderr and access log in files; each case checks the client's bytes and
that gproxy logged the session (so a client that silently skipped the proxy fails).
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import logfmt_fields  # one reader of the access log's logfmt, shared with the tests

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "alice", "s3cr3t-Pw"
BAD_PASSWORD = "wrong-Pw"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

#: tool -> the Debian package that provides it
DEBIAN_PACKAGES = {
    "curl": "curl",
    "ncat": "ncat",
    "proxychains4": "proxychains4",
    "java": "default-jdk-headless",
    "javac": "default-jdk-headless",
    "openssl": "openssl",
}


@dataclass(frozen=True)
class Target:
    """A destination form: an IPv4 literal, an IPv6 literal or a name."""

    label: str
    host: str

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def hostport(self, port: int) -> str:
        return f"{self.url_host}:{port}"

    def __str__(self) -> str:
        return self.label


V4 = Target("v4", "127.0.0.1")
V6 = Target("v6", "::1")
NAME = Target("name", "localhost")
TARGETS = {t.label: t for t in (V4, V6, NAME)}


def missing(what: str, hint: str) -> None:
    """Skip locally, fail in CI: CI must run every case."""
    message = f"{what} is not available ({hint})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(f"{message}; CI runs this case")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, f"apt-get install {DEBIAN_PACKAGES.get(name, name)}")
    return str(path)


def need_file(path: str, package: str) -> str:
    if not os.path.exists(path):
        missing(path, f"apt-get install {package}")
    return path


def client_env() -> dict[str, str]:
    """The environment minus proxy variables, so only the flags under test choose the proxy."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def run(cmd: Sequence[str], *, input: bytes | None = None, timeout: float = 60, check: bool = True) -> str:
    """Run a client; its stdout as text. Non-zero exit fails the case with the client's stderr."""
    try:
        done = subprocess.run(list(cmd), input=input, capture_output=True, timeout=timeout, env=client_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{shlex.join(cmd)} timed out after {timeout}s; stderr: {exc.stderr!r}", pytrace=False)
    if check and done.returncode != 0:
        pytest.fail(
            f"{shlex.join(cmd)} exited {done.returncode}\nstdout: {done.stdout.decode(errors='replace')[:2000]}"
            f"\nstderr: {done.stderr.decode(errors='replace')[:2000]}",
            pytrace=False,
        )
    return done.stdout.decode(errors="replace")


def run_failing(cmd: Sequence[str], *, input: bytes | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run a client that is expected to fail; (exit code, stdout, stderr)."""
    done = subprocess.run(list(cmd), input=input, capture_output=True, timeout=timeout, env=client_env())
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


class Gproxy:
    """``python -m gproxy`` with one listener; stderr and access log go to files."""

    FLAGS = {"socks5": "--socks", "http": "--http", "mixed": "--mixed", "https": "--https"}

    def __init__(self, kind: str, auth: bool, workdir: Path, extra: Sequence[str] = ()) -> None:
        self.kind = kind
        self.auth = auth
        name = f"gproxy-{kind}-{'auth' if auth else 'noauth'}"
        self.stderr_path = workdir / f"{name}.stderr"
        self.access_path = workdir / f"{name}.access"
        self.access_path.write_text("")
        args = [self.FLAGS[kind], "127.0.0.1:0", "--access-log", str(self.access_path), "--log-level", "debug"]
        if auth:
            args += ["--user", f"{USER}:{PASSWORD}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gproxy", *args, *extra],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                cwd=ROOT,
            )
        self.host, self.port = "127.0.0.1", self._wait_listening(20)

    def _wait_listening(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr_path.read_text(errors="replace").splitlines():
                if line.startswith(f"gproxy: listening {self.kind} "):
                    return int(line.rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gproxy --{self.kind} exited {self.proc.returncode}: {self.stderr_path.read_text().strip()}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"gproxy --{self.kind} did not announce its listener in {timeout}s")

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def user(self) -> str | None:
        return USER if self.auth else None

    @property
    def password(self) -> str | None:
        return PASSWORD if self.auth else None

    def url(self, scheme: str, password: str = PASSWORD) -> str:
        """``scheme://[user:pass@]host:port`` for this proxy."""
        cred = f"{USER}:{password}@" if self.auth else ""
        return f"{scheme}://{cred}{self.hostport}"

    # -- the access log: proof that the session went through gproxy -------------------

    def _lines(self) -> list[str]:
        """The access log's complete lines: one gproxy is still writing is left for the next look."""
        text = self.access_path.read_text(errors="replace")
        return text[: text.rfind("\n") + 1].splitlines()

    @contextmanager
    def session(self, dest_port: int, *, proto: str | None = None, timeout: float = 10) -> Iterator[None]:
        """The block must make gproxy log a finished session to ``dest_port`` (as our user)."""
        start = len(self._lines())
        yield
        want_user = USER if self.auth else "-"
        deadline = time.monotonic() + timeout
        new: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            new = [logfmt_fields(line) for line in self._lines()[start:]]
            for record in new:
                if (
                    record.get("dest", "").endswith(f":{dest_port}")
                    and record.get("user") == want_user
                    and (proto is None or record.get("proto") == proto)
                ):
                    return
            time.sleep(0.05)
        raise AssertionError(
            f"gproxy logged no session to port {dest_port} (user={want_user}, proto={proto}); new lines: {new}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Proxies:
    """gproxy processes started on first use, one per (listener kind, auth); shared by the session."""

    def __init__(self, workdir: Path, cert: Path, key: Path) -> None:
        self.workdir = workdir
        self.tls = ["--cert", str(cert), "--key", str(key)]
        self._running: dict[tuple[str, bool], Gproxy | str] = {}

    def get(self, kind: str, auth: bool) -> Gproxy:
        key = (kind, auth)
        if key not in self._running:
            try:
                self._running[key] = Gproxy(kind, auth, self.workdir, self.tls if kind == "https" else ())
            except RuntimeError as exc:
                self._running[key] = str(exc)
        running = self._running[key]
        if isinstance(running, str):
            pytest.fail(f"cannot start gproxy: {running}", pytrace=False)
        return running

    def stop(self) -> None:
        for running in self._running.values():
            if isinstance(running, Gproxy):
                running.stop()


AUTH_MODES = ("noauth", "auth")


def case(  # type: ignore[no-untyped-def]
    client: str, dests: str = "v4 v6 name", auths: Sequence[str] = AUTH_MODES, client_bugs: dict[str, str] | None = None
):
    """Parametrize a test over destinations and auth modes, as one row of the matrix.

    ``client_bugs`` maps a destination to a known bug of the client (not gproxy) that
    makes it fail there: a strict xfail, so the case turns red once the client is fixed.
    """
    bugs = client_bugs or {}

    def param(label: str):  # type: ignore[no-untyped-def]
        marks = [pytest.mark.xfail(strict=True, reason=bugs[label])] if label in bugs else []
        return pytest.param(TARGETS[label], id=label, marks=marks)

    def apply(fn):  # type: ignore[no-untyped-def]
        fn = pytest.mark.parametrize("auth", list(auths))(fn)
        fn = pytest.mark.parametrize("dest", [param(d) for d in dests.split()])(fn)
        return pytest.mark.client(client)(fn)

    return apply


def token() -> str:
    """A fresh path/payload marker, so no answer can come from an earlier case."""
    return uuid.uuid4().hex[:16]


def payload(size: int = 100_000) -> bytes:
    """``size`` bytes that differ from run to run."""
    seed = token().encode()
    return (seed * (size // len(seed) + 1))[:size]


def need_module(name: str, package: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name}", f"pip install {package}; tox installs it")
