"""``gproxy passwd FILE USER`` as users run it: stdin piped or a terminal, file modes, exit codes."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time

import bcrypt
import pytest

from tests.helpers import gproxy_env


def passwd(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gproxy", "passwd", *args],
        input=stdin,
        capture_output=True,
        env=gproxy_env(),
        timeout=30,
    )


def secret_of(path, user: str) -> bytes:
    lines = [line for line in path.read_text().splitlines() if line.startswith(f"{user}:")]
    assert len(lines) == 1, lines
    return lines[0].partition(":")[2].encode()


def test_new_file_is_mode_0600_with_a_bcrypt_hash(tmp_path):
    path = tmp_path / "users"
    result = passwd(str(path), "alice", stdin=b"right horse\n")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = secret_of(path, "alice")
    assert secret.startswith(b"$2b$")
    assert bcrypt.checkpw(b"right horse", secret)
    assert b"right horse" not in result.stdout + result.stderr
    assert result.stderr.count(b"\n") == 1


def test_a_new_file_appears_whole_and_never_over_one_made_meanwhile(tmp_path, monkeypatch):
    # the lines are written beside it first; a file that appeared meanwhile is left alone
    from gproxy.ops import passwd as passwd_module

    path = tmp_path / "users"
    made = passwd_module.tempfile.mkstemp

    def someone_else_first(*args, **kwargs):
        path.write_text("carol:theirs\n")
        return made(*args, **kwargs)

    monkeypatch.setattr(passwd_module.tempfile, "mkstemp", someone_else_first)
    with pytest.raises(FileExistsError):
        passwd_module.write_users_file(str(path), "alice", "secret")
    assert path.read_text() == "carol:theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no temp file left


def test_replace_keeps_every_other_line_and_the_mode(tmp_path):
    path = tmp_path / "users"
    before = (
        "# team A\nbob:pw\n\nalice:old\n  # indented comment\n"
        "carol:$2y$05$sWdY3DyPa5BunKsaW3kIsud9uyDipx/5l6Lrqd5p8IOTRVGF7tf02\nalice:older\n"
    )
    path.write_text(before)
    path.chmod(0o640)
    result = passwd(str(path), "alice", stdin=b"new horse\n")
    assert result.returncode == 0, result.stderr
    lines = path.read_text().splitlines()
    kept = [line for line in before.splitlines() if not line.startswith("alice:")]
    assert [line for line in lines if not line.startswith("alice:")] == kept
    assert lines.index(next(line for line in lines if line.startswith("alice:"))) == 3  # where the old one was
    assert bcrypt.checkpw(b"new horse", secret_of(path, "alice"))  # one line: the later duplicate is gone
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temp file left behind


def test_appends_a_new_user_after_a_last_line_without_newline(tmp_path):
    path = tmp_path / "users"
    path.write_text("bob:pw")
    assert passwd(str(path), "alice", stdin=b"pw2").returncode == 0  # no newline after the password either
    lines = path.read_text().splitlines()
    assert lines[0] == "bob:pw"
    assert bcrypt.checkpw(b"pw2", secret_of(path, "alice"))


@pytest.mark.parametrize(
    ("user", "stdin", "message"),
    [
        ("alice", b"\n", b"empty"),
        ("alice", b"", b"empty"),
        ("", b"pw\n", b"empty"),
        ("al:ice", b"pw\n", b"':'"),
        ("al ice", b"pw\n", b"spaces"),
        ("al\tice", b"pw\n", b"spaces"),
        ("#alice", b"pw\n", b"'#'"),
        ("alice", b"x" * 73 + b"\n", b"72 bytes"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(tmp_path, user, stdin, message):
    path = tmp_path / "users"
    path.write_text("bob:pw\n")
    result = passwd(str(path), user, stdin=stdin)
    assert result.returncode == 2
    assert result.stderr.startswith(b"gproxy passwd: ") and result.stderr.count(b"\n") == 1
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert path.read_text() == "bob:pw\n"


@pytest.mark.parametrize("where", ["dir", "missing-dir", "proc"])
def test_unreadable_or_unwritable_file_is_exit_2(tmp_path, where):
    path = {"dir": str(tmp_path), "missing-dir": str(tmp_path / "no" / "users"), "proc": "/proc/version"}[where]
    result = passwd(path, "alice", stdin=b"pw\n")
    assert result.returncode == 2
    assert result.stderr.startswith(f"gproxy passwd: {path}: ".encode()) and result.stderr.count(b"\n") == 1
    assert b"pw" not in result.stderr.replace(b"passwd", b"")


def test_help():
    result = subprocess.run(
        [sys.executable, "-m", "gproxy", "passwd", "--help"], capture_output=True, env=gproxy_env(), timeout=30
    )
    assert result.returncode == 0
    assert b"gproxy passwd" in result.stdout and b"FILE" in result.stdout and b"USER" in result.stdout


def on_terminal(path, user: str, answers: list[bytes]) -> tuple[int, bytes]:
    """Run gproxy passwd with a pty as its terminal; answer each prompt; (exit code, all terminal output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gproxy", "passwd", str(path), user],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=gproxy_env(),
        start_new_session=True,  # no controlling terminal: getpass uses the pty on stdin, echo off
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 30

    def read_more() -> bytes:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(output)
        try:
            return os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            return b""

    try:
        for prompt, answer in zip((b"Password: ", b"Again: "), answers, strict=True):
            while prompt not in output:
                chunk = read_more()
                assert chunk, output
                output += chunk
            output = output.replace(prompt, b"<prompt>", 1)
            os.write(master, answer + b"\n")
        while chunk := read_more():
            output += chunk
        returncode = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, output


def test_terminal_asks_twice_and_never_echoes(tmp_path):
    path = tmp_path / "users"
    code, output = on_terminal(path, "alice", [b"tty horse", b"tty horse"])
    assert code == 0, output
    assert output.count(b"<prompt>") == 2
    assert b"tty horse" not in output
    assert bcrypt.checkpw(b"tty horse", secret_of(path, "alice"))


def test_terminal_mismatch_is_exit_2_and_leaves_the_file(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:old\n")
    code, output = on_terminal(path, "alice", [b"tty horse", b"tty horsf"])
    assert code == 2
    assert b"gproxy passwd: the passwords do not match" in output
    assert b"tty hors" not in output
    assert path.read_text() == "alice:old\n"
