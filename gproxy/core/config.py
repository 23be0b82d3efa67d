"""Settings: the options table, TOML loading, and the frozen Config.

One table (OPTIONS) defines every setting once: the CLI builds its flags
from it and the TOML loader checks keys and types against it, so the two
can never drift apart. ``Config.build(**settings)`` is the Python API.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gproxy.core.access import Network, parse_network, parse_users, read_users_file
from gproxy.core.addr import Address, ascii_digits, format_hostport, parse_ip
from gproxy.core.errors import ConfigError
from gproxy.core.limits import parse_rate
from gproxy.core.outbound import parse_outgoing
from gproxy.core.resolver_url import parse_resolver_url
from gproxy.core.rules import DestRule, RuleSet, UserSettings, parse_dest_rule, parse_users_table
from gproxy.core.upstream_url import Upstream, parse_upstream


@dataclass(frozen=True)
class Option:
    key: str  # the long flag without dashes, and the TOML key
    kind: type
    help: str
    repeat: bool = False
    metavar: str | None = None
    default: Any = None


#: listener option key -> listener kind printed in "gproxy: listening KIND ..."
LISTENER_KINDS = {
    "socks": "socks5",
    "http": "http",
    "mixed": "mixed",
    "https": "https",
    "socks-tls": "socks5-tls",
    "forward": "forward",
    "udp-forward": "udp-forward",
    "metrics": "metrics",
    "admin": "admin",
    "redirect": "redirect",
    "tproxy": "tproxy",
    "ss": "ss",
}
#: kinds that relay for whoever asks, and so must not be open by accident
PROXY_KINDS = frozenset({"socks5", "http", "mixed", "https", "socks5-tls", "redirect", "tproxy", "ss"})
TLS_KINDS = frozenset({"https", "socks5-tls"})
#: kinds that serve connections a firewall diverted to them: no credentials, ever
TRANSPARENT_KINDS = frozenset({"redirect", "tproxy"})

OPTIONS: tuple[Option, ...] = (
    Option("socks", str, "SOCKS4/4a/5 listener", True, "ADDR"),
    Option("http", str, "HTTP proxy listener (CONNECT and absolute-URI)", True, "ADDR"),
    Option("mixed", str, "SOCKS and HTTP on one port", True, "ADDR"),
    Option("https", str, "HTTP proxy over TLS (needs --cert/--key)", True, "ADDR"),
    Option("socks-tls", str, "SOCKS over TLS (needs --cert/--key)", True, "ADDR"),
    Option("forward", str, "plain TCP forwarder", True, "ADDR=HOST:PORT"),
    Option("udp-forward", str, "plain UDP relay", True, "ADDR=HOST:PORT"),
    Option("metrics", str, "Prometheus metrics at http://ADDR/metrics", True, "ADDR"),
    Option("admin", str, "operators' HTTP listener: /sessions, /healthz and a page at /", True, "ADDR"),
    Option("admin-token", str, "--admin wants Authorization: Bearer TOKEN (needed off loopback)", metavar="TOKEN"),
    Option("redirect", str, "transparent TCP: connections a firewall redirected (SO_ORIGINAL_DST)", True, "ADDR"),
    Option("tproxy", str, "transparent TCP and UDP through TPROXY (IP_TRANSPARENT)", True, "ADDR"),
    Option("user", str, "require this user (repeats)", True, "USER:PASS"),
    Option("users-file", str, "users, one USER:PASS a line; reloaded on SIGHUP", metavar="FILE"),
    Option("auth-cache", float, "remember a good hashed password this long (0: off)", metavar="SECONDS", default=300.0),
    Option("allow", str, "only clients in this network may connect (repeats)", True, "CIDR"),
    Option("deny", str, "clients in this network may not connect (repeats)", True, "CIDR"),
    Option("allow-dest", str, "destinations that may be reached (repeats)", True, "CIDR|HOST"),
    Option("deny-dest", str, "destinations that may not be reached (repeats)", True, "CIDR|HOST"),
    Option("upstream", str, "chain outbound connections through this proxy (repeats: a group)", True, "URL"),
    Option(
        "upstream-strategy",
        str,
        "failover, round-robin, random or least-conns",
        metavar="STRATEGY",
        default="failover",
    ),
    Option("upstream-cooldown", float, "an upstream that failed is skipped this long", metavar="SECONDS", default=30.0),
    Option("bypass", str, "destinations reached directly even with --upstream (repeats)", True, "CIDR|HOST"),
    Option("ca", str, "extra CA certificates (PEM) for outbound TLS (repeats)", True, "FILE"),
    Option("connect-timeout", float, "outbound connect timeout", metavar="SECONDS", default=10.0),
    Option("idle-timeout", float, "close tunnels idle this long (0: never)", metavar="SECONDS", default=300.0),
    Option("handshake-timeout", float, "drop clients slower than this to ask", metavar="SECONDS", default=10.0),
    Option("drain-timeout", float, "on SIGTERM, let sessions finish this long", metavar="SECONDS", default=10.0),
    Option("max-conns", int, "refuse clients beyond this many (0: no limit)", metavar="N", default=0),
    Option(
        "max-conns-per-ip",
        int,
        "refuse a client address beyond this many (0: no limit)",
        metavar="N",
        default=0,
    ),
    Option(
        "ipv6-prefix",
        int,
        "--max-conns-per-ip counts IPv6 clients per network of this prefix length",
        metavar="BITS",
        default=64,
    ),
    Option(
        "max-conns-per-user",
        int,
        "refuse a user's sessions beyond this many, after auth (0: no limit)",
        metavar="N",
        default=0,
    ),
    Option(
        "rate", str, "each user's (or client IP's) bytes per second, each way: 500k, 1M (0: no limit)", metavar="RATE"
    ),
    Option("auth-url", str, "check users not in --user/--users-file with a POST to this URL", metavar="URL"),
    Option("workers", int, "worker processes sharing each port (SO_REUSEPORT)", metavar="N", default=1),
    Option("access-log", str, "one logfmt line per session to FILE, or - for stdout", metavar="FILE|-"),
    Option("log-level", str, "debug, info, warning or error", metavar="LEVEL", default="info"),
    Option("cert", str, "TLS certificate chain (PEM) for --https/--socks-tls", metavar="FILE"),
    Option("key", str, "TLS private key (PEM) for --https/--socks-tls", metavar="FILE"),
    Option("proxy-protocol", bool, "expect a PROXY protocol v1/v2 header from a load balancer", default=False),
    Option("udp-advertise", str, "announce this IP for UDP ASSOCIATE (behind NAT)", metavar="IP"),
    Option("resolver", str, "own DNS client: IP[:PORT], tcp://IP, tls://HOST, https://HOST/PATH", True, "URL"),
    Option("outgoing", str, "source address of outbound connections (one IPv4, one IPv6)", True, "IP"),
    Option("mark", int, "SO_MARK on every outbound socket (0: none), to exempt gproxy from redirects", metavar="N"),
    Option("ss", str, "Shadowsocks AEAD listener, TCP and UDP on one port (users are the keys)", True, "ADDR"),
    Option("ss-method", str, "Shadowsocks cipher for --ss", metavar="NAME", default="chacha20-ietf-poly1305"),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
LOG_LEVELS = ("debug", "info", "warning", "error")
UPSTREAM_STRATEGIES = ("failover", "round-robin", "random", "least-conns")
#: the most --workers: each is a process of its own
MAX_WORKERS = 1024


@dataclass(frozen=True)
class ListenerSpec:
    kind: str
    host: str
    port: int
    target: Address | None = None  # forward / udp-forward only

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        ip = parse_ip(self.host)
        return ip is not None and ip.is_loopback


def parse_hostport(spec: str, flag: str, default_host: str | None = "127.0.0.1") -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; a bare port binds ``default_host``."""
    spec = spec.strip()
    if ascii_digits(spec) and default_host is not None:
        host, port_text = default_host, spec
    elif spec.startswith("["):
        host, sep, port_text = spec[1:].partition("]:")
        if not sep or parse_ip(host) is None or ":" not in host:
            raise ConfigError(f"{flag}: {spec!r} is not [IPV6]:PORT")
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep or not host:
            want = "PORT, HOST:PORT or [IPV6]:PORT" if default_host else "HOST:PORT"
            raise ConfigError(f"{flag}: {spec!r} is not {want}")
        if ":" in host:
            raise ConfigError(f"{flag}: put IPv6 addresses in brackets, as [{host}]:{port_text}")
    if not ascii_digits(port_text) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag}: port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def parse_listener(key: str, spec: str) -> ListenerSpec:
    flag = f"--{key}"
    kind = LISTENER_KINDS[key]
    if kind in ("forward", "udp-forward"):
        listen, sep, target = spec.partition("=")
        if not sep:
            raise ConfigError(f"{flag}: expected ADDR=HOST:PORT, got {spec!r}")
        host, port = parse_hostport(listen, flag)
        thost, tport = parse_hostport(target, flag, default_host=None)
        if tport == 0:
            raise ConfigError(f"{flag}: the target port may not be 0")
        return ListenerSpec(kind, host, port, Address(thost, tport))
    host, port = parse_hostport(spec, flag)
    return ListenerSpec(kind, host, port)


#: the settings only a restart applies (the listeners and the rest that start() builds)
RESTART_ONLY = (
    "listeners",
    "workers",
    "access_log",
    "log_level",
    "cert",
    "key",
    "resolver",
    "outgoing",
    "mark",
    "admin_token",
    "ss_method",  # the UDP side's cipher is made at start; the TCP side keeps to the same
)


@dataclass(frozen=True)
class Config:
    """Everything a Proxy needs; build it with ``Config.build(...)``."""

    listeners: tuple[ListenerSpec, ...] = ()
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    users_file: str | None = None
    auth_cache: float = 300.0
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    allow_dest: tuple[DestRule, ...] = ()
    deny_dest: tuple[DestRule, ...] = ()
    user_rules: Mapping[str, RuleSet] = field(default_factory=dict)  # from [users.NAME] tables
    upstream: tuple[Upstream, ...] = ()
    upstream_strategy: str = "failover"
    upstream_cooldown: float = 30.0
    bypass: tuple[DestRule, ...] = ()
    ca: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0
    drain_timeout: float = 10.0
    max_conns: int = 0
    max_conns_per_ip: int = 0
    ipv6_prefix: int = 64
    max_conns_per_user: int = 0
    rate: int = 0  # bytes per second per user (or client IP), each direction; 0: no limit
    auth_url: str | None = None
    user_settings: Mapping[str, UserSettings] = field(default_factory=dict)  # from [users.NAME] tables
    workers: int = 1
    access_log: str | None = None
    log_level: str = "info"
    cert: str | None = None
    key: str | None = None
    proxy_protocol: bool = False
    udp_advertise: str | None = None
    mark: int = 0
    outgoing: tuple[str, ...] = ()
    resolver: tuple[str, ...] = ()
    ss_method: str = "chacha20-ietf-poly1305"
    admin_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # TOML-only tables (may hold passwords)

    @classmethod
    def build(cls, **settings: Any) -> Config:
        """From Python names: ``Config.build(socks=["0"], user=["u:p"], idle_timeout=5)``."""
        return cls.from_settings({name.replace("_", "-"): value for name, value in settings.items()})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Config:
        """From option keys (``socks``, ``idle-timeout``, ...) to a validated Config.

        ``extra`` holds the TOML-only tables (see EXTRA_TABLES). A setting given as None
        is not given (its default), a repeated one as much as a single one.
        """
        checked = {key: _check_type(key, value, "") for key, value in settings.items()}
        values = {key: value for key, value in checked.items() if value is not None}
        listeners = tuple(parse_listener(key, spec) for key in LISTENER_KINDS for spec in values.get(key, ()))
        kwargs: dict[str, Any] = {
            "listeners": listeners,
            "users": parse_users(values.get("user", ())),
            "allow": tuple(parse_network(s, "--allow") for s in values.get("allow", ())),
            "deny": tuple(parse_network(s, "--deny") for s in values.get("deny", ())),
            "allow_dest": tuple(parse_dest_rule(s, "--allow-dest") for s in values.get("allow-dest", ())),
            "deny_dest": tuple(parse_dest_rule(s, "--deny-dest") for s in values.get("deny-dest", ())),
            "upstream": tuple(parse_upstream(s) for s in values.get("upstream", ())),
            "bypass": tuple(parse_dest_rule(s, "--bypass") for s in values.get("bypass", ())),
            "ca": values.get("ca", ()),
            "outgoing": values.get("outgoing", ()),
            "resolver": values.get("resolver", ()),
            "extra": dict(extra or {}),
        }
        for option in OPTIONS:
            if not option.repeat and option.key in values:
                kwargs[option.key.replace("-", "_")] = values[option.key]
        if values.get("rate") is not None:
            kwargs["rate"] = parse_rate(values["rate"])
        _add_user_tables(kwargs, (extra or {}).get("users"))
        config = cls(**kwargs)
        config.validate()
        return config

    @property
    def has_auth(self) -> bool:
        """Whether clients must authenticate: any --user, a users file (even one that turns out empty), --auth-url."""
        return bool(self.users) or self.users_file is not None or self.auth_url is not None

    def validate(self) -> None:
        """Reject settings that cannot work, and open proxies made by accident."""
        if not self.listeners:
            raise ConfigError("nothing to serve: give a listener such as --socks 1080 (see --help)")
        for option in OPTIONS:  # every float is seconds; nan passes each comparison below
            if option.kind is float and math.isnan(getattr(self, option.key.replace("-", "_"))):
                raise ConfigError(f"--{option.key} must be a number of seconds, not nan")
        for name in ("users_file", "access_log"):  # "" is falsy: the server would act as if it were not given
            if getattr(self, name) == "":
                raise ConfigError(f"--{name.replace('_', '-')} may not be empty")
        for name in ("connect_timeout", "handshake_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be greater than 0")
        for name in (
            "idle_timeout",
            "drain_timeout",
            "max_conns",
            "max_conns_per_ip",
            "max_conns_per_user",
            "upstream_cooldown",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} may not be negative")
        if not 0 <= self.auth_cache < math.inf:
            raise ConfigError("--auth-cache must be a number of seconds, 0 or more")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ConfigError("--ipv6-prefix must be between 1 and 128")
        if self.auth_url is not None:
            from gproxy.core.auth_service import parse_auth_url  # noqa: PLC0415 (the client needs gevent)

            parse_auth_url(self.auth_url)
        if not 1 <= self.workers <= MAX_WORKERS:  # a huge N had the supervisor build N slots, then spawn them
            raise ConfigError(f"--workers must be a number from 1 to {MAX_WORKERS}")
        if self.upstream_strategy not in UPSTREAM_STRATEGIES:
            raise ConfigError(f"--upstream-strategy must be one of {', '.join(UPSTREAM_STRATEGIES)}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.udp_advertise is not None and parse_ip(self.udp_advertise) is None:
            raise ConfigError(f"--udp-advertise: {self.udp_advertise!r} is not an IP address")
        if any(spec.kind == "ss" for spec in self.listeners):
            _check_ss(self)
        tls = [spec for spec in self.listeners if spec.kind in TLS_KINDS]
        if tls and not (self.cert and self.key):
            raise ConfigError(
                f"--{'https' if tls[0].kind == 'https' else 'socks-tls'} needs --cert FILE and --key FILE"
            )
        parse_outgoing(self.outgoing)
        for url in self.resolver:
            parse_resolver_url(url)
        if not 0 <= self.mark < 1 << 32:
            raise ConfigError("--mark must be a number from 0 to 4294967295")
        if self.admin_token is not None and not self.admin_token.strip():
            raise ConfigError("--admin-token may not be empty")
        for spec in self.listeners:
            if spec.kind == "admin" and self.exposes(spec) and self.admin_token is None:
                raise ConfigError(
                    f"--admin {spec} is not on loopback: add --admin-token TOKEN (clients send Authorization: Bearer)"
                )
            if spec.kind in TRANSPARENT_KINDS and not spec.is_loopback and not self.allow:
                raise ConfigError(
                    f"refusing to run an open proxy: {spec.kind} on {spec} carries no credentials; "
                    f"add --allow CIDR for the clients whose traffic is diverted to it"
                )
        if not self.has_auth and not self.allow:
            for spec in self.listeners:
                if spec.kind in PROXY_KINDS and self.exposes(spec):
                    raise ConfigError(
                        f"refusing to run an open proxy: {spec.kind} on {spec} has no users and no "
                        f"--allow; add --user USER:PASS, or --allow CIDR for the clients that may use it"
                    )

    def needs_restart(self, new: Config) -> list[str]:
        """What ``new`` changes that a reload does not apply (sockets bound, processes,
        files opened and contexts built at start): their names, as flags."""
        changed = [name for name in RESTART_ONLY if getattr(self, name) != getattr(new, name)]
        return [name if name == "listeners" else f"--{name.replace('_', '-')}" for name in changed]

    def reloaded(self, new: Config) -> Config:
        """``new`` as a reload applies it to a server running with this config: what only a
        restart applies keeps its running value (the listeners bound, for one)."""
        return replace(new, **{name: getattr(self, name) for name in RESTART_ONLY})

    def exposes(self, spec: ListenerSpec) -> bool:
        """Whether ``spec`` may serve other hosts' clients: not bound to loopback, or
        behind a load balancer (--proxy-protocol: HAProxy on this host relays remote clients)."""
        return self.proxy_protocol or not spec.is_loopback

    @property
    def dest_rules(self) -> RuleSet:
        return RuleSet(self.allow_dest, self.deny_dest)

    def to_logging_level(self) -> int:
        return int(getattr(logging, self.log_level.upper()))


def _check_ss(config: Config) -> None:
    """--ss needs a known --ss-method and a user whose password is in clear (the key)."""
    from gproxy.codec.shadowsocks import method_by_name  # noqa: PLC0415 (only --ss needs cryptography)
    from gproxy.core.ss_keys import clear_text_users  # noqa: PLC0415

    method_by_name(config.ss_method)
    pairs = list(config.users) + (read_users_file(config.users_file) if config.users_file else [])
    if not clear_text_users(pairs):
        raise ConfigError("--ss needs a user with a clear-text password (--user USER:PASS): the password is the key")


def _add_user_tables(kwargs: dict[str, Any], table: Any) -> None:
    """``[users.NAME]`` tables: their passwords join the users, their rules become user_rules."""
    if table is None:
        return
    named = {user for user, _ in kwargs["users"]}
    users = list(kwargs["users"])
    tables = parse_users_table(table)
    for name, entry in tables.items():
        if entry.password is not None:
            users.append((name, entry.password))
        elif name not in named and kwargs.get("users_file") is None and kwargs.get("auth_url") is None:
            raise ConfigError(
                f"'users.{name}' has no password, and {name} is not in --user or --users-file (nor --auth-url)"
            )
    kwargs["users"] = tuple(users)
    kwargs["user_rules"] = {name: entry.rules for name, entry in tables.items()}
    kwargs["user_settings"] = {name: entry.settings for name, entry in tables.items()}


def _check_type(key: str, value: Any, where: str) -> Any:
    """Check one setting's type against OPTIONS; repeated options become tuples."""
    option = OPTIONS_BY_KEY.get(key)
    if option is None:
        raise ConfigError(f"{where}unknown setting {key!r}")
    if value is None:
        return None
    if key in _STRING_OR_NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        return value  # ``rate = 1048576`` as well as ``rate = "1M"``
    if option.repeat:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}{key!r} must be a string or an array of strings")
        return tuple(items)
    if option.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, option.kind) or (option.kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}{key!r} must be {_type_name(option.kind)}, not {type(value).__name__}")
    return value


#: string options whose TOML value may also be a number
_STRING_OR_NUMBER = frozenset({"rate"})


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]


#: TOML tables that are not flags (per-user rules and the like); each
#: owner validates its own table and finds it in ``Config.extra``.
EXTRA_TABLES: frozenset[str] = frozenset({"users"})


def load_toml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a config file: (settings by option key, extra tables).

    Raises ConfigError naming the file and the key for unknown keys and wrong types.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    settings: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in EXTRA_TABLES:
            extra[key] = value
        else:
            settings[key] = _check_type(key, value, f"{path}: ")
    return settings, extra
