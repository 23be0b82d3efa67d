"""``--auth-url``: users not in the local table are checked by an HTTP(S) POST to an auth service.

The URL, the request bytes, reading the answer (bounded head and body) and judging it are
sans-I/O (``parse_auth_url``, ``Exchange``, ``judge``); ``AuthService.check`` does the
socket I/O on gevent, within one deadline. The password goes into the request body only:
never into a log line, an error message or a metric label.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent
import h11
from gevent import socket as gsocket

from gproxy.core.addr import format_hostport, parse_ip
from gproxy.core.errors import AuthFailed, ConfigError, Outcome
from gproxy.core.log import logger
from gproxy.core.rules import SETTING_KEYS, UserSettings, parse_user_settings
from gproxy.core.tls_client import tls_connect
from gproxy.core.upstream_url import redact_url

if TYPE_CHECKING:
    import ssl

#: the whole exchange (connect, TLS, request, answer) must be done within this
TIMEOUT = 5.0
#: at most one warning about an unavailable service this often
WARN_EVERY = 10.0
#: bounds on the answer: its head (status line and headers) and its body
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
_RECV = 16 * 1024


class AuthUnavailable(AuthFailed):
    """The auth service gave no usable answer (not 2xx/401/403, broken, too big or too late): rejected."""

    reason = Outcome.AUTH_UNAVAILABLE


class AnswerError(Exception):
    """Why an exchange with the auth service gave no usable answer (safe to log: no password)."""


@dataclass(frozen=True)
class AuthUrl:
    """A parsed ``--auth-url``; ``str()`` leaves out the query (it may carry a token)."""

    tls: bool
    host: str
    port: int
    target: str  # path and query, as sent on the request line

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{format_hostport(self.host, self.port)}{self.target.split('?')[0]}"


def parse_auth_url(text: str) -> AuthUrl:
    """``http://HOST[:PORT]/PATH`` or ``https://...``; ConfigError naming --auth-url otherwise,
    showing the URL without its query."""
    shown = redact_url(text)  # the query too: it may carry a token (AuthUrl.__str__ leaves it out)
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"--auth-url: {shown!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"--auth-url: {shown!r} must start with http:// or https://")
    host = parts.hostname
    if not host or (":" in host and parse_ip(host) is None) or any(c in host for c in " /\\@"):
        raise ConfigError(f"--auth-url: {shown!r} needs a host, as http://127.0.0.1:8000/check")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"--auth-url: {shown!r}: credentials in the URL are not supported")
    if parts.fragment or port == 0:
        raise ConfigError(f"--auth-url: {shown!r} may not have a fragment or port 0")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return AuthUrl(scheme == "https", host, port or (443 if scheme == "https" else 80), target)


def request_body(user: str, password: str, client: str, listener: str) -> bytes:
    """The JSON the service is sent."""
    return json.dumps({"user": user, "password": password, "client": client, "listener": listener}).encode()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # empty unless 2xx


class Exchange:
    """One request and its answer, sans I/O: send ``outgoing``, ``feed`` what comes back."""

    def __init__(self, url: AuthUrl, body: bytes) -> None:
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        headers = [
            ("Host", format_hostport(url.host, url.port)),
            ("User-Agent", "gproxy"),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        self.outgoing = b"".join(
            self._http.send(event) or b""
            for event in (h11.Request(method="POST", target=url.target, headers=headers), h11.Data(data=body))
        ) + (self._http.send(h11.EndOfMessage()) or b"")
        self._status: int | None = None
        self._body = bytearray()

    def feed(self, data: bytes) -> Answer | None:
        """Bytes from the service (``b""`` at EOF); the Answer once complete, else None.

        Raises AnswerError for broken HTTP, a head over MAX_HEAD, a body over MAX_BODY, an early close.
        """
        self._http.receive_data(data)
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                raise AnswerError(f"broken HTTP answer ({exc})") from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                self._status = event.status_code
                if not 200 <= event.status_code < 300:
                    return Answer(event.status_code, b"")  # the body does not matter
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > MAX_BODY:
                    raise AnswerError(f"answer body over {MAX_BODY} bytes")
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self._status is not None
                return Answer(self._status, bytes(self._body))
            elif isinstance(event, h11.ConnectionClosed):
                raise AnswerError("the service closed the connection before answering")


def judge(answer: Answer) -> UserSettings | None:
    """2xx: accepted, with the settings in the body (if any); 401/403: None (rejected).

    Raises AnswerError for any other status and for a body that is not a JSON object of
    valid settings (a service that answers nonsense is not trusted to accept).
    """
    if answer.status in (401, 403):
        return None
    if not 200 <= answer.status < 300:
        raise AnswerError(f"status {answer.status}")
    if not answer.body.strip():
        return UserSettings()
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        raise AnswerError("the answer body is not JSON") from None
    if not isinstance(data, dict):
        raise AnswerError("the answer body is not a JSON object")
    unknown = sorted(set(data) - set(SETTING_KEYS))
    if unknown:
        raise AnswerError(f"unknown setting {unknown[0]!r} in the answer (known: {', '.join(SETTING_KEYS)})")
    try:
        return parse_user_settings(data, "answer")
    except ConfigError as exc:
        raise AnswerError(str(exc)) from None


class AuthService:
    """The client of one --auth-url: ``check`` asks it about one user."""

    def __init__(
        self,
        url: AuthUrl,
        tls: ssl.SSLContext | None = None,
        *,
        timeout: float = TIMEOUT,
        warn_every: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url.tls and tls is None:
            raise ValueError("an https:// auth URL needs a TLS context")
        self.url = url
        self.tls = tls
        self.timeout = timeout
        self.warn_every = warn_every
        self._clock = clock
        self._warned_at: float | None = None
        self._unwarned = 0  # failures since the last warning

    def check(self, user: str, password: str, client: str, listener: str) -> UserSettings | None:
        """The user's settings if the service accepts, None if it rejects (401/403).

        Raises AuthUnavailable (and warns, at most once per ``warn_every``) otherwise.
        """
        exchange = Exchange(self.url, request_body(user, password, client, listener))
        try:
            with gevent.Timeout(self.timeout, AnswerError(f"no answer within {self.timeout:g} s")):
                return judge(self._run(exchange))
        except (AnswerError, OSError) as exc:
            self._warn(str(exc) or type(exc).__name__)
            raise AuthUnavailable(f"auth service unavailable: {exc}") from None

    def _run(self, exchange: Exchange) -> Answer:
        sock = gsocket.create_connection((self.url.host, self.url.port))
        try:
            if self.tls is not None:
                sock = tls_connect(sock, self.tls, self.url.host)  # closes sock if it fails
            sock.sendall(exchange.outgoing)
            while True:
                data = sock.recv(_RECV)
                answer = exchange.feed(data)
                if answer is not None:
                    return answer
                if not data:
                    raise AnswerError("the service closed the connection before answering")
        finally:
            sock.close()

    def _warn(self, reason: str) -> None:
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        logger.warning("--auth-url %s: %s; its users are refused (auth_unavailable)%s", self.url, reason, more)
        self._warned_at, self._unwarned = now, 0
