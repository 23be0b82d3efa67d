"""``gproxy passwd FILE USER``: write or replace USER's line in a users file with a bcrypt hash.

The password is asked twice on a terminal, or read as one line from a
non-terminal stdin. Other lines stay as they were; the file is replaced
atomically, and a new one is created whole with mode 0600. Exit 0, or 2 with one line;
Ctrl-C is exit 130 with one line, SIGTERM 143 and SIGHUP 129 (ops/cli.py), the file as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import NoReturn

from gproxy.core.passwords import BCRYPT_MAX_PASSWORD, hash_password

#: longest stdin line read (RFC 1929 passwords are at most 255 bytes)
MAX_LINE = 1024


class PasswdError(Exception):
    """A user's mistake: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gproxy passwd: {message} (see gproxy passwd --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gproxy passwd",
        description="Write or replace USER's line in the users file FILE with a bcrypt hash. The password "
        "is asked twice on a terminal, or read as one line from standard input when that is not a terminal. "
        "A new FILE is created with mode 0600.",
    )
    parser.add_argument("file", metavar="FILE", help="the users file (one USER:SECRET a line)")
    parser.add_argument("user", metavar="USER", help="the user name (no ':' and no spaces)")
    return parser


def check_user(user: str) -> None:
    if not user:
        raise PasswdError("the user name is empty")
    if ":" in user or any(char.isspace() for char in user) or not user.isprintable():
        raise PasswdError("a user name may not hold ':', spaces or control characters")
    if user.startswith("#"):
        raise PasswdError("a user name may not start with '#' (that line would be a comment)")
    if len(user.encode()) > 255:
        raise PasswdError("a user name is at most 255 bytes (RFC 1929)")


def read_password() -> bytes:
    """Twice from the terminal, or one line from stdin."""
    if sys.stdin.isatty():
        try:
            first = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except KeyboardInterrupt:
            print(file=sys.stderr)  # end the prompt's line (no echo: not even ^C shows)
            raise
        if again != first:
            raise PasswdError("the passwords do not match")
        password = first.encode("utf-8")
    else:
        line = sys.stdin.buffer.readline(MAX_LINE)
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            raise PasswdError(f"the password line is longer than {MAX_LINE - 1} bytes")
        password = line.removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        raise PasswdError("the password is empty")
    if len(password) > BCRYPT_MAX_PASSWORD:
        raise PasswdError(f"bcrypt passwords are at most {BCRYPT_MAX_PASSWORD} bytes")
    return password


def set_line(text: str, user: str, secret: str) -> str:
    """``text`` with USER's line (the first; later ones dropped) set to ``USER:SECRET``."""
    out: list[str] = []
    new_line = f"{user}:{secret}\n"
    done = False
    for line in text.splitlines(keepends=True):
        entry = line.strip()
        if entry and not entry.startswith("#") and entry.partition(":")[0] == user:
            if not done:
                out.append(new_line)
                done = True
            continue  # a later duplicate would win over the new line when the file is read
        out.append(line)
    if not done:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(new_line)
    return "".join(out)


def write_users_file(path: str, user: str, secret: str) -> None:
    """Replace the file atomically (same mode), or create it, whole, with mode 0600: the
    lines go to a temp file beside it, which then takes its place (a new file's name is
    taken with link(), so a file made meanwhile by someone else is never overwritten)."""
    try:
        with open(path, encoding="utf-8") as file:
            text: str | None = file.read()
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
    except FileNotFoundError:
        text, mode = None, 0o600
    except UnicodeDecodeError:
        raise PasswdError(f"{path}: not UTF-8 text") from None
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), mode)
            file.write(set_line(text or "", user, secret))
            file.flush()
            os.fsync(file.fileno())
        if text is None:
            os.link(temp, path)  # FileExistsError if it appeared meanwhile: nothing overwritten
        else:
            os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)  # after link() the file keeps its name; after replace() it is gone


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    path = os.path.realpath(args.file)  # through a symlink, update the file it points to
    try:
        check_user(args.user)
        password = read_password()
        write_users_file(path, args.user, hash_password(password))
    except PasswdError as exc:
        print(f"gproxy passwd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gproxy passwd: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except EOFError:
        print("gproxy passwd: no password given", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the file is replaced atomically, or not at all
        print("gproxy passwd: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    print(f"gproxy passwd: set the password of {args.user} in {args.file}", file=sys.stderr)
    return 0
