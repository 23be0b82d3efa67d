"""Audit #13: an error about a setting that can hold a password names where it is
(flag, file and line), never what it says; files gproxy creates are private."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gproxy import Config
from tests.helpers import child_pids, gproxy_env, start_gproxy, wait_for

SECRET = "hunter2"


def one_line_error(*args: str, cwd: Path) -> str:
    """``python -m gproxy ARGS`` must exit 2 with one line on stderr; returns that line."""
    proc = subprocess.run(
        [sys.executable, "-m", "gproxy", *args], capture_output=True, env=gproxy_env(), cwd=cwd, timeout=20
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1, err
    return err


USERS_FILE_TYPOS = {
    "space": f"alice:one\n# staff\nbob {SECRET}\n",
    "equals": f"alice:one\n# staff\nbob={SECRET}\n",
    "no_name": f"alice:one\n# staff\n:{SECRET}\n",
    "too_long": f"alice:one\n# staff\nbob:{SECRET * 40}\n",
}


@pytest.mark.parametrize("content", list(USERS_FILE_TYPOS.values()), ids=list(USERS_FILE_TYPOS))
def test_a_bad_users_file_line_is_named_by_file_and_line(tmp_path, content):
    users = tmp_path / "users"
    users.write_text(content)
    err = one_line_error("--socks", "0", "--users-file", str(users), cwd=tmp_path)
    assert f"{users}:3" in err and SECRET not in err


ARGV_TYPOS = {
    "user_space": ["--user", f"bob {SECRET}"],
    "user_equals": ["--user", f"bob={SECRET}"],
    "second_user": ["--user", "alice:one", "--user", f"bob {SECRET}"],
    "user_too_long": ["--user", f"bob:{SECRET * 40}"],
    "upstream_bad_port": ["--upstream", f"socks5://u:{SECRET}@127.0.0.1:99999"],
    "upstream_bad_scheme": ["--upstream", f"ftp://u:{SECRET}@127.0.0.1:1"],
    "upstream_socks4_password": ["--upstream", f"socks4://u:{SECRET}@127.0.0.1:1"],
    "auth_url_bad_port": ["--auth-url", f"http://127.0.0.1:99999/check?token={SECRET}"],
    "auth_url_bad_scheme": ["--auth-url", f"ftp://127.0.0.1/check?token={SECRET}"],
    "auth_url_fragment": ["--auth-url", f"http://127.0.0.1/check#token={SECRET}"],
}


@pytest.mark.parametrize("args", list(ARGV_TYPOS.values()), ids=list(ARGV_TYPOS))
def test_flag_errors_do_not_print_the_password(tmp_path, args):
    assert SECRET not in one_line_error("--socks", "0", *args, cwd=tmp_path)


TOML_TYPOS = {
    "user_typo": f'socks = ["0"]\nuser = ["bob {SECRET}"]\n',
    "unterminated": f'socks = ["0"]\nuser = ["bob:{SECRET}"\n',
    "table_unterminated": f'socks = ["0"]\n[users.bob]\npassword = "{SECRET}\n',
    "table_too_long": f'socks = ["0"]\n[users.bob]\npassword = "{SECRET * 40}"\n',
    "table_named_user_colon_password": f'socks = ["0"]\n[users."bob:{SECRET}"]\nrate = 1\n',
    "table_named_user_colon_password_unknown_key": f'socks = ["0"]\n[users."bob:{SECRET}"]\nrte = 1\n',
    "key_user_colon_password": f'socks = ["0"]\n[users]\n"bob:{SECRET}" = 1\n',
}


@pytest.mark.parametrize("content", list(TOML_TYPOS.values()), ids=list(TOML_TYPOS))
def test_config_file_errors_do_not_print_the_password(tmp_path, content):
    config = tmp_path / "gproxy.toml"
    config.write_text(content)
    assert SECRET not in one_line_error("--config", str(config), cwd=tmp_path)


def test_a_reload_with_a_typo_logs_the_line_not_the_password(proxy, tmp_path, caplog):
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users))
    users.write_text(f"u:p\nbob {SECRET}\n")
    assert not running.reload(Config.build(socks=["127.0.0.1:0"], users_file=str(users)))
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"{users}:2" in error and SECRET not in error


RELOAD_TYPOS = {
    "auth_url_query": f'socks = ["127.0.0.1:0"]\nauth-url = "http://127.0.0.1:99999/check?token={SECRET}"\n',
    "users_table_name": f'socks = ["127.0.0.1:0"]\n[users."bob:{SECRET}"]\nrate = 1\n',
}


@pytest.mark.parametrize("content", list(RELOAD_TYPOS.values()), ids=list(RELOAD_TYPOS))
def test_a_sighup_with_a_typo_logs_no_secret(tmp_path, content):
    """The error of a failed reload goes to the error log: the same care as at start."""
    config = tmp_path / "gproxy.toml"
    config.write_text('socks = ["127.0.0.1:0"]\n')
    running = start_gproxy("--config", str(config))
    try:
        config.write_text(content)
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed" in line for line in running.stderr_lines), what="the reload error")
    finally:
        assert running.stop() == 0
    (error,) = [line for line in running.stderr_lines if "reload failed" in line]
    assert SECRET not in "".join(running.stderr_lines), error


def test_the_workers_metrics_directory_is_private():
    """The multiprocess metrics files (one per worker) live in a 0700 directory."""
    running = start_gproxy("--socks", "0", "--metrics", "0", "--workers", "2", listeners=2)
    try:
        pids = wait_for(lambda: len(child_pids(running.proc.pid)) == 2 and child_pids(running.proc.pid), what="workers")
        environ = Path(f"/proc/{min(pids)}/environ").read_bytes().split(b"\0")
        (entry,) = [e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
        directory = entry.split(b"=", 1)[1].decode()
        info = os.stat(directory)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    finally:
        assert running.stop() == 0
    assert not os.path.exists(directory)  # removed at exit
