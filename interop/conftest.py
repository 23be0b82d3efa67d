"""Fixtures for the interop suite, and the client x destination x auth matrix
printed at the end of the run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.origins import Origins, make_cert
from interop.support import Proxies, Target, missing, need_file, need_tool

JAVA_DIR = Path(__file__).resolve().parent / "java"
JARS = ("/usr/share/java/okhttp.jar", "/usr/share/java/okio.jar")

#: (client, destination, auth column) -> outcome, filled as cases finish
MATRIX: dict[tuple[str, str, str], str] = {}
AUTH_COLUMNS = ("noauth", "auth", "wrong-pw")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "client(label): the matrix row an interop case belongs to")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="session")
def cert_pair(workdir: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl", "apt-get install openssl")
    return make_cert(workdir)


@pytest.fixture(scope="session")
def origins(cert_pair: tuple[Path, Path]) -> Iterator[Origins]:
    servers = Origins(*cert_pair)
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def proxies(workdir: Path, cert_pair: tuple[Path, Path]) -> Iterator[Proxies]:
    running = Proxies(workdir, *cert_pair)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def java_build() -> Path:
    """Compile interop/java into interop/java/build (once per run)."""
    javac = need_tool("javac")
    need_tool("java")
    for jar in JARS:
        need_file(jar, "libokhttp-java libokio-java")
    build = JAVA_DIR / "build"
    build.mkdir(exist_ok=True)
    sources = sorted(str(p) for p in JAVA_DIR.glob("*.java"))
    done = subprocess.run(
        [javac, "-Xlint:all", "-Werror", "-d", str(build), "-cp", ":".join(JARS), *sources],
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"javac failed:\n{done.stderr.decode(errors='replace')}", pytrace=False)
    return build


# -- the matrix --------------------------------------------------------------------------


def _cell(item: pytest.Item) -> tuple[str, str, str] | None:
    marker = item.get_closest_marker("client")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None:
        return None
    dest = callspec.params.get("dest")
    auth = callspec.params.get("auth")
    label = dest.label if isinstance(dest, Target) else str(dest)
    return marker.args[0], label, str(auth)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    cell = _cell(item)
    if cell is None:
        return
    if report.skipped and hasattr(report, "wasxfail"):
        MATRIX[cell] = "xfail"
    elif report.skipped:
        MATRIX.setdefault(cell, "skip")
    elif report.failed:
        MATRIX[cell] = "FAIL"
    elif report.when == "call":
        MATRIX.setdefault(cell, "pass")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MATRIX:
        return
    clients = list(dict.fromkeys(client for client, _, _ in MATRIX))
    columns = [(dest, auth) for dest in ("v4", "v6", "name") for auth in AUTH_COLUMNS]
    columns = [c for c in columns if any((cl, *c) in MATRIX for cl in clients)]
    width = max(len(c) for c in clients)
    heads = [f"{dest}/{auth}" for dest, auth in columns]
    terminalreporter.section("interop matrix (client x destination/auth)")
    terminalreporter.write_line(" ".join([" " * width, *(h.rjust(max(len(h), 4)) for h in heads)]))
    for client in clients:
        cells = [MATRIX.get((client, *col), "-").rjust(max(len(h), 4)) for col, h in zip(columns, heads, strict=True)]
        terminalreporter.write_line(" ".join([client.ljust(width), *cells]))
    counts = {state: sum(1 for v in MATRIX.values() if v == state) for state in ("pass", "FAIL", "skip", "xfail")}
    terminalreporter.write_line(
        ", ".join(f"{n} {state}" for state, n in counts.items())
        + "; '-' = not applicable to that client; xfail = a known bug of the client, see the case's reason"
    )
