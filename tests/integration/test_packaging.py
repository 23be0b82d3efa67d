"""Operator packaging: the systemd unit, the Dockerfile, and an install as the Dockerfile does it."""

import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "packaging" / "gproxy.service"


def unit_settings() -> dict[str, list[str]]:
    """``Key=value`` lines by key (keys repeat, e.g. SystemCallFilter)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_hardening_of_dantes_and_tlsrouters_units():
    settings = unit_settings()
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "LimitNOFILE": "65536",
        "Type": "notify",  # gproxy sends READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1
        "NotifyAccess": "main",  # the --workers supervisor; workers never see NOTIFY_SOCKET
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert settings["ExecStart"][0].split()[1:] == ["--config", "/etc/gproxy/gproxy.toml"]
    # SIGTERM drains for --drain-timeout (10 s): systemd must wait longer before SIGKILL.
    assert int(settings["TimeoutStopSec"][0].rstrip("s")) > 10
    # gproxy pings at half the interval; well above a reload's or a drain's pauses
    assert int(settings["WatchdogSec"][0].rstrip("s")) >= 10


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    """The unit as systemd reads it (ExecStart pointed at this checkout's gproxy)."""
    unit = tmp_path / "gproxy.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gproxy", f"{sys.executable} -m gproxy"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gproxy.service" not in done.stderr, done.stderr


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_runs_gproxy_as_a_user():
    instructions = dockerfile()
    assert re.fullmatch(r"python:3\.1[1-9]-slim", dict(instructions)["FROM"])
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert dict(instructions)["ENTRYPOINT"] == '["gproxy"]'
    for op, arg in instructions:
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


@pytest.mark.slow
def test_install_as_the_dockerfile_does(tmp_path, monkeypatch):
    """``pip install .`` of exactly the files the Dockerfile copies, into a fresh venv:
    the ``gproxy`` command works and pytest loads the plugin through its entry point."""
    src = tmp_path / "src"
    src.mkdir()
    for op, arg in dockerfile():
        if op == "COPY":
            for source in arg.split()[:-1]:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, src / source)
    venv = tmp_path / "venv"
    # as a user's shell has it: a PYTHONPATH pointing at this checkout would hide what pip installed
    monkeypatch.delenv("PYTHONPATH", raising=False)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A venv of its own with gproxy's declared dependencies only (plus pytest for the user's suite):
    # a dependency missing from pyproject.toml fails here, as it would for a user.
    pip = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", str(src), "pytest"], capture_output=True, text=True, timeout=300
    )
    assert pip.returncode == 0, pip.stderr
    version = subprocess.run([venv / "bin" / "gproxy", "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "gproxy 0.1.0"

    user_suite = tmp_path / "app"
    user_suite.mkdir()
    (user_suite / "test_app.py").write_text(
        textwrap.dedent(
            """
            import socket
            import sys
            import gproxy

            def test_fixture_from_the_entry_point(gproxy_socks):
                assert gproxy.__file__.startswith(sys.prefix)
                address = gproxy_socks.address("socks5")
                with socket.create_connection((address.host, address.port), timeout=10) as sock:
                    sock.sendall(b"\\x05\\x01\\x02")
                    assert sock.recv(2) == b"\\x05\\x02"
            """
        )
    )
    run = subprocess.run(
        [venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=user_suite,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
