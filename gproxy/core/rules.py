"""Destination rules: where clients may be relayed to.

Checked twice: on the destination as the client named it (``check``), and
on every IP a name resolves to (the IPCheck that ``check`` returns, or
``check_ip``), so a name cannot smuggle a denied address past us (no DNS
rebinding). Rules are parsed once, at config time; no I/O here except
reading this host's interface addresses once per policy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from gproxy.core.addr import Address, IPAddress, ascii_digits, canonical_host, parse_ip, unmap_ip
from gproxy.core.errors import ClientProtocolError, ConfigError, Denied
from gproxy.core.limits import parse_rate
from gproxy.core.upstream_url import Upstream, parse_upstream

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPCheck = Callable[[IPAddress, int], None]

#: how many passed (ip, port) pairs a policy remembers before it starts over
_PASSED_MAX = 4096
_LOCAL_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net) for net in ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)


@dataclass(frozen=True)
class DestRule:
    """One ``--allow-dest``/``--deny-dest`` entry: a network, a name, ``*.suffix`` or ``*``,
    with an optional port range."""

    text: str
    network: Network | None = None  # an IP or CIDR rule
    name: str | None = None  # exact name, or ".suffix" for "*.suffix", or "" for "*"
    ports: tuple[int, int] = (1, 65535)

    def __str__(self) -> str:
        return self.text

    def port_matches(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]

    def matches_name(self, host: str, port: int) -> bool:
        if self.name is None or not self.port_matches(port):
            return False
        host = host.rstrip(".").lower()
        if self.name == "":
            return True
        if self.name.startswith("."):
            return host.endswith(self.name)
        return host == self.name

    def matches_ip(self, ip: IPAddress, port: int) -> bool:
        if self.name == "":
            return self.port_matches(port)
        return self.network is not None and ip in self.network and self.port_matches(port)

    def names_local(self, ip: IPAddress, port: int) -> bool:
        """Whether this rule opens a loopback/link-local/own address explicitly: it matches
        ``ip`` and its network is a single address or lies inside a local network."""
        net = self.network
        if net is None or not self.matches_ip(ip, port):
            return False
        if net.num_addresses == 1:
            return True
        return any(net.version == local.version and net.subnet_of(local) for local in _LOCAL_NETWORKS)  # type: ignore[arg-type]


def parse_dest_rule(spec: str, flag: str) -> DestRule:
    """``CIDR``, ``HOST``, ``*.SUFFIX`` or ``*``, each with an optional ``:PORT`` or
    ``:LO-HI``; IPv6 in brackets when a port follows (``[fd00::/8]:22``)."""
    text = spec.strip()
    bad = ConfigError(
        f"{flag}: {spec!r} is not CIDR, HOST, *.SUFFIX or *, with an optional :PORT or :LO-HI "
        "(IPv6 in brackets: [::1]:22)"
    )
    host, ports = text, (1, 65535)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        if rest:
            ports = _parse_ports(rest[1:], bad)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        ports = _parse_ports(port_text, bad)
    if not host:
        raise bad
    if host == "*":
        return DestRule(text, name="", ports=ports)
    with contextlib.suppress(ValueError):
        return DestRule(text, network=ipaddress.ip_network(host, strict=False), ports=ports)
    suffix = host.startswith("*.")
    try:  # the form client names are matched in (canonical_host): a Unicode rule matches its IDNA spelling
        name = canonical_host(host[2:] if suffix else host).rstrip(".")
    except ClientProtocolError:
        raise bad from None
    if not name or ":" in name:
        raise bad
    return DestRule(text, name="." + name if suffix else name, ports=ports)


def _parse_ports(text: str, bad: ConfigError) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    if not ascii_digits(lo_text) or (sep and not ascii_digits(hi_text)):
        raise bad
    lo, hi = int(lo_text), int(hi_text) if sep else int(lo_text)
    if not 1 <= lo <= hi <= 65535:
        raise bad
    return lo, hi


@dataclass(frozen=True)
class RuleSet:
    """One layer of allow/deny rules (the flags, or one user's table)."""

    allow: tuple[DestRule, ...] = ()
    deny: tuple[DestRule, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str], deny: Iterable[str], where: str = "--") -> RuleSet:
        return cls(
            tuple(parse_dest_rule(s, f"{where}allow-dest") for s in allow),
            tuple(parse_dest_rule(s, f"{where}deny-dest") for s in deny),
        )


@dataclass(frozen=True)
class UserSettings:
    """One user's own settings: a ``[users.NAME]`` table, or what ``--auth-url`` answered.

    None (or empty) means "not set": the global setting applies.
    """

    rules: RuleSet = RuleSet()
    rate: int | None = None  # bytes per second; 0: no limit
    max_conns: int | None = None  # open sessions; 0: no limit
    upstream: tuple[Upstream, ...] = ()
    outgoing: IPAddress | None = None

    def overlaid(self, other: UserSettings) -> UserSettings:
        """These settings with every one that ``other`` sets taken from ``other``."""
        return UserSettings(
            other.rules if other.rules.allow or other.rules.deny else self.rules,
            self.rate if other.rate is None else other.rate,
            self.max_conns if other.max_conns is None else other.max_conns,
            other.upstream or self.upstream,
            self.outgoing if other.outgoing is None else other.outgoing,
        )


@dataclass(frozen=True)
class UserRules:
    """A ``[users.NAME]`` table: an optional password and that user's settings."""

    password: str | None
    settings: UserSettings

    @property
    def rules(self) -> RuleSet:
        return self.settings.rules

    def __repr__(self) -> str:
        return f"UserRules(password={'***' if self.password else None}, settings={self.settings!r})"


#: the keys of a ``[users.NAME]`` table, and of an --auth-url answer (but ``password``)
SETTING_KEYS = ("rate", "max-conns", "allow-dest", "deny-dest", "upstream", "outgoing")
_USER_KEYS = frozenset({"password", *SETTING_KEYS})


def _strings(value: object, where: str) -> list[str]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where!r} must be a string or an array of strings")
    return value


def parse_user_settings(entry: Mapping[str, object], where: str) -> UserSettings:
    """The setting keys of ``entry`` (SETTING_KEYS; others are the caller's to check);
    ConfigError names ``where.KEY`` and never quotes a password."""
    rate = entry.get("rate")
    max_conns = entry.get("max-conns")
    if max_conns is not None and (not isinstance(max_conns, int) or isinstance(max_conns, bool) or max_conns < 0):
        raise ConfigError(f"{where + '.max-conns'!r} must be an integer, 0 (no limit) or more")
    outgoing_text = entry.get("outgoing")
    outgoing = None
    if outgoing_text is not None:
        outgoing = parse_ip(outgoing_text) if isinstance(outgoing_text, str) else None
        if outgoing is None:
            raise ConfigError(f"{where + '.outgoing'!r} must be an IP address")
    upstream = []
    for url in _strings(entry.get("upstream", []), f"{where}.upstream"):
        try:
            upstream.append(parse_upstream(url))
        except ConfigError as exc:  # its message hides the URL's password
            raise ConfigError(f"{where}.upstream: {str(exc).removeprefix('--upstream: ')}") from None
    return UserSettings(
        RuleSet.parse(
            _strings(entry.get("allow-dest", []), f"{where}.allow-dest"),
            _strings(entry.get("deny-dest", []), f"{where}.deny-dest"),
            f"{where}.",
        ),
        None if rate is None else _parse_rate(rate, f"{where}.rate"),
        max_conns,
        tuple(upstream),
        outgoing,
    )


def _parse_rate(value: object, where: str) -> int:
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{where!r} must be a rate such as 500k, 1M or 0")
    return parse_rate(value, where)


def parse_users_table(table: object) -> dict[str, UserRules]:
    """The TOML ``[users.NAME]`` tables; ConfigError names the key at fault, but a NAME
    with ':' only up to it (``[users."alice:PASS"]`` is a USER:PASS typo)."""
    if not isinstance(table, Mapping):
        raise ConfigError("'users' must be a table of [users.NAME] tables")
    users = {}
    for name, entry in table.items():
        user, colon, _ = name.partition(":")
        if colon:
            shown = f"users.{user}:..."
            raise ConfigError(f"{shown!r}: a user name may not hold ':' (the rest is not shown: it may be a password)")
        where = f"users.{name}"
        if not name or len(name.encode()) > 255:
            raise ConfigError(f"{where!r}: user names are 1 to 255 bytes without ':'")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where!r} must be a table (password, {', '.join(SETTING_KEYS)})")
        unknown = set(entry) - _USER_KEYS
        if unknown:
            raise ConfigError(f"unknown setting {where + '.' + sorted(unknown)[0]!r}")
        password = entry.get("password")
        if password is not None and (not isinstance(password, str) or len(password.encode()) > 255):
            raise ConfigError(f"{where + '.password'!r} must be a string of at most 255 bytes")
        users[name] = UserRules(password, parse_user_settings(entry, where))
    return users


class DestinationPolicy:
    """The rules for one listener (and, via ``for_user``, one user on it).

    ``own`` are gproxy's listening (ip, port) pairs: relaying to them would
    loop. ``deny_local`` denies loopback, link-local and this host's own
    addresses, the default for listeners reachable from other hosts; an
    allow rule naming such an address (a single address, or a network
    inside 127/8, ::1, 169.254/16, fe80::/10) opens it. Deny wins; with
    allow rules in a layer, only what that layer allows passes.
    """

    def __init__(
        self,
        own: Iterable[tuple[IPAddress, int]] = (),
        deny_local: bool = False,
        rules: RuleSet = RuleSet(),
        users: Mapping[str, RuleSet] | None = None,
        *,
        _layers: tuple[RuleSet, ...] | None = None,
    ) -> None:
        self.own = {(unmap_ip(ip), port) for ip, port in own}
        self.own_ports = {port for ip, port in self.own if ip.is_unspecified}
        self.deny_local = deny_local
        self.layers = _layers if _layers is not None else (rules,)
        self.users = users if users is not None else {}  # may be live (users of --auth-url come and go)
        self._per_user: dict[str, DestinationPolicy] = {}
        self._passed: set[tuple[IPAddress, int]] = set()  # (ip, port) that check_ip let through

    @cached_property
    def host_ips(self) -> frozenset[IPAddress]:
        """This host's interface addresses, read once (only when needed)."""
        return host_addresses()

    def for_user(self, user: str | None) -> DestinationPolicy:
        """This policy with ``user``'s own rules added as one more layer."""
        rules = None if user is None else self.users.get(user)
        if user is None or rules is None or not (rules.allow or rules.deny):
            return self
        policy = self._per_user.get(user)
        if policy is None or policy.layers[-1] is not rules:  # new, or the user's rules changed
            policy = DestinationPolicy((), self.deny_local, _layers=(*self.layers, rules))
            policy.own, policy.own_ports = self.own, self.own_ports
            policy.__dict__["host_ips"] = self.host_ips
            if len(self._per_user) >= _PASSED_MAX:
                self._per_user.clear()
            self._per_user[user] = policy
        return policy

    def check(self, dest: Address) -> IPCheck:
        """Check a destination as the client gave it (before any resolution).

        Returns the check for each address it resolves to: one that knows
        whether an allow rule named ``dest`` itself. Raises Denied.
        """
        if dest.port == 0:
            raise Denied(f"{dest}: port 0")
        ip = dest.ip
        if ip is not None:
            self.check_ip(ip, dest.port)
            return self.check_ip
        for layer in self.layers:
            for rule in layer.deny:
                if rule.matches_name(dest.host, dest.port):
                    raise Denied(f"{dest} is denied by {rule}")
        named = tuple(any(r.matches_name(dest.host, dest.port) for r in layer.allow) for layer in self.layers)
        for layer, allowed in zip(self.layers, named, strict=True):
            if layer.allow and not allowed and not any(r.network is not None for r in layer.allow):
                raise Denied(f"{dest} is not in the allowed destinations")

        def check_resolved(resolved: IPAddress, port: int) -> None:
            self._check_ip(resolved, port, named)

        return check_resolved

    def check_ip(self, ip: IPAddress, port: int) -> None:
        """Check one address (an IP the client gave, or one a name resolved to); raises Denied.

        Addresses that passed are remembered (a bounded set): the policy never changes.
        """
        key = (ip, port)
        if key in self._passed:
            return
        self._check_ip(ip, port, (False,) * len(self.layers))
        if len(self._passed) >= _PASSED_MAX:
            self._passed.clear()
        self._passed.add(key)

    def is_own(self, ip: IPAddress, port: int) -> bool:
        """Whether ``ip``:``port`` is one of gproxy's own listeners (relaying there would loop)."""
        ip = unmap_ip(ip)
        return (ip, port) in self.own or (port in self.own_ports and self._is_local(ip))

    def _check_ip(self, ip: IPAddress, port: int, named: tuple[bool, ...]) -> None:
        ip = unmap_ip(ip)
        if ip.is_unspecified or port == 0:
            raise Denied(f"{ip}: unspecified address or port")
        if self.is_own(ip, port):
            raise Denied(f"{ip} port {port} is gproxy itself")
        for layer in self.layers:
            for rule in layer.deny:
                if rule.matches_ip(ip, port):
                    raise Denied(f"{ip} port {port} is denied by {rule}")
        if (
            self.deny_local
            and self._is_local(ip, all_local=True)
            and not any(r.names_local(ip, port) for layer in self.layers for r in layer.allow)
        ):
            raise Denied(f"{ip} is a loopback, link-local or own address (open it with --allow-dest {ip})")
        for layer, allowed in zip(self.layers, named, strict=True):
            if layer.allow and not allowed and not any(r.matches_ip(ip, port) for r in layer.allow):
                raise Denied(f"{ip} port {port} is not in the allowed destinations")

    def _is_local(self, ip: IPAddress, all_local: bool = False) -> bool:
        """This host's: loopback or an interface address (and, with ``all_local``, link-local)."""
        if ip.is_loopback or ip in self.host_ips:
            return True
        return all_local and any(ip in net for net in _LOCAL_NETWORKS)


def host_addresses() -> frozenset[IPAddress]:
    """Every address of this host's interfaces (Linux /proc; else the host name's)."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError), open("/proc/net/fib_trie", encoding="ascii") as file:
        last = None
        for line in file:
            words = line.split()
            if len(words) == 2 and words[0] in ("|--", "+--"):
                last = words[1]
            elif "/32 host LOCAL" in line and last is not None:
                ip = parse_ip(last)
                if ip is not None:
                    found.add(ip)
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as file:
        for line in file:
            hexip = line.split()[0]
            found.add(ipaddress.IPv6Address(int(hexip, 16)))
    if found:
        return frozenset(found)
    with contextlib.suppress(OSError, UnicodeError):  # not Linux: the host name's addresses
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, 0, socket.SOCK_STREAM):
            ip = parse_ip(str(sockaddr[0]))
            if ip is not None:
                found.add(unmap_ip(ip))
    return frozenset(found)
