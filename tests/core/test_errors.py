"""One outcome vocabulary (gproxy/core/errors.py): every error's reason is an Outcome, socket
errors map to one name whatever the phase, and the README lists exactly the members."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re

import pytest

import gproxy
from gproxy.codec.replies import ReplyCode
from gproxy.core.errors import DialError, GproxyError, Outcome, outcome_of
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (OSError(errno.ECONNRESET, "reset"), Outcome.RESET),
        (ConnectionResetError(), Outcome.RESET),
        (OSError(errno.EPIPE, "pipe"), Outcome.BROKEN_PIPE),
        (OSError(errno.ETIMEDOUT, "timed out"), Outcome.TIMED_OUT),
        (TimeoutError("timed out"), Outcome.TIMED_OUT),
        (OSError(errno.EBADF, "bad fd"), Outcome.ERROR),
        (OSError("no errno"), Outcome.ERROR),
        (DialError("refused", ReplyCode.CONNECTION_REFUSED), Outcome.CONNECTION_REFUSED),
    ],
)
def test_outcome_of_a_socket_error(exc: OSError, outcome: Outcome) -> None:
    assert outcome_of(exc) is outcome


@pytest.mark.parametrize("reply", [code for code in ReplyCode if code is not ReplyCode.SUCCEEDED])
def test_every_dial_failure_is_an_outcome(reply: ReplyCode) -> None:
    assert DialError("x", reply).reason is Outcome(reply.name.lower())


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_error_in_gproxy_has_an_outcome_reason() -> None:
    for module in pkgutil.walk_packages(gproxy.__path__, "gproxy."):
        if module.name != "gproxy.__main__":
            importlib.import_module(module.name)
    errors = _subclasses(GproxyError) | {GproxyError}
    assert len(errors) > 15
    for error in errors:
        assert isinstance(error.reason, Outcome), error


def test_the_readme_lists_every_outcome() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n| outcome | meaning |\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9_]+)` \| ", table, re.M)
    assert sorted(listed) == sorted(Outcome), "the README's outcome table and Outcome differ"
    assert len(listed) == len(set(listed))
