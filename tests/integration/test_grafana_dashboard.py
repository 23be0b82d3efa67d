"""packaging/grafana-dashboard.json: every PromQL expression parses, and every metric it names
is one a running gproxy (with an upstream, so the upstream metrics appear) really exposes."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ROOT, recv_all, start_gproxy

DASHBOARD = ROOT / "packaging" / "grafana-dashboard.json"

AGGREGATIONS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group"}
FUNCTIONS = {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "abs", "clamp", "clamp_min",
    "clamp_max", "histogram_quantile", "label_replace", "label_join", "absent", "vector", "scalar", "time",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "round", "ceil", "floor", "sort", "sort_desc", "timestamp",
}  # fmt: skip
BINARY = {"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}
#: Grafana's own interval variables, as Prometheus receives them
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}
TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<range>\[(?:\d+[smhdwy])+(?::(?:\d+[smhdwy])*)?\])
    | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    )""",
    re.VERBOSE,
)


class PromQL:
    """A recursive-descent parser for the PromQL a dashboard uses; ``metrics`` are the names it selects."""

    def __init__(self, text: str) -> None:
        for variable, value in GRAFANA_INTERVALS.items():
            text = text.replace(variable, value)
        self.tokens: list[tuple[str, str]] = []
        position, text = 0, text.rstrip()
        while position < len(text):
            match = TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise SyntaxError(f"cannot read {text[position:]!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.next = 0
        self.metrics: set[str] = set()
        self.expression()
        if self.next != len(self.tokens):
            raise SyntaxError(f"unexpected {self.peek()!r}")

    def peek(self) -> str | None:
        return self.tokens[self.next][1] if self.next < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.next >= len(self.tokens):
            raise SyntaxError(f"expected {value or kind}, got the end")
        token_kind, token = self.tokens[self.next]
        if (kind and token_kind != kind) or (value and token != value):
            raise SyntaxError(f"expected {value or kind}, got {token!r}")
        self.next += 1
        return token

    def expression(self) -> None:
        self.unary()
        while self.peek() in BINARY:
            self.take()
            if self.peek() == "bool":
                self.take()
            if self.peek() in ("on", "ignoring"):
                self.take()
                self.label_list()
            if self.peek() in ("group_left", "group_right"):
                self.take()
                if self.peek() == "(":
                    self.label_list()
            self.unary()

    def unary(self) -> None:
        while self.peek() in ("-", "+"):
            self.take()
        self.primary()
        if self.next < len(self.tokens) and self.tokens[self.next][0] == "range":
            self.take("range")

    def primary(self) -> None:
        if self.next >= len(self.tokens):
            raise SyntaxError("expected an expression, got the end")
        kind, token = self.tokens[self.next]
        if kind in ("number", "string"):
            self.take()
        elif token == "(":
            self.take()
            self.expression()
            self.take(value=")")
        elif kind == "ident" and token in AGGREGATIONS:
            self.take()
            self.grouping()
            self.arguments()
            self.grouping()
        elif kind == "ident" and token in FUNCTIONS:
            self.take()
            self.arguments()
        elif kind == "ident" and self.next + 1 < len(self.tokens) and self.tokens[self.next + 1][1] == "(":
            raise SyntaxError(f"unknown function {token}")
        elif kind == "ident":
            self.metrics.add(self.take())
            if self.peek() == "{":
                self.matchers()
        else:
            raise SyntaxError(f"unexpected {token!r}")

    def grouping(self) -> None:
        if self.peek() in ("by", "without"):
            self.take()
            self.label_list()

    def arguments(self) -> None:
        self.take(value="(")
        if self.peek() != ")":
            self.expression()
            while self.peek() == ",":
                self.take()
                self.expression()
        self.take(value=")")

    def label_list(self) -> None:
        self.take(value="(")
        while self.peek() != ")":
            self.take("ident")
            if self.peek() != ")":
                self.take(value=",")
        self.take(value=")")

    def matchers(self) -> None:
        self.take(value="{")
        while self.peek() != "}":
            self.take("ident")
            if self.peek() not in ("=", "!=", "=~", "!~"):
                raise SyntaxError(f"expected a label matcher, got {self.peek()!r}")
            self.take()
            self.take("string")
            if self.peek() != "}":
                self.take(value=",")
        self.take(value="}")


def metrics_in(expression: str) -> set[str]:
    return PromQL(expression).metrics


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from walk(item)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in walk(board["panels"]) for target in panel.get("targets", [])]


def variable_queries(board: dict[str, Any]) -> list[str]:
    """The PromQL inside ``label_values(EXPR, label)`` of query variables."""
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_]\w*\)", query)
            assert match, query
            found.append(match.group(1))
    return found


#: the sample names each metric type exposes, from the family name
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "unknown": ("",),
}


def exposed_sample_names(port: int) -> set[str]:
    """Every sample name a ``/metrics`` scrape may carry, labelled families without children included."""
    from prometheus_client.parser import text_string_to_metric_families

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, _, body = recv_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return {
        family.name + suffix
        for family in text_string_to_metric_families(body.decode())
        for suffix in SUFFIXES[family.type]
    }


def test_parser_reads_promql_and_finds_the_metrics():
    expression = 'sum by (a) (rate(x_total{b="c", d=~"e.*"}[$__rate_interval])) / on (a) group_left max(y) > bool 0'
    assert metrics_in(expression) == {"x_total", "y"}
    assert metrics_in("-sum without (pid) (increase(z_total[5m:1m]))") == {"z_total"}


@pytest.mark.parametrize(
    "broken",
    ["sum(rate(x_total[5m])", 'x{a="b"', "rat(x_total[5m])", "sum by a (x)", "x[5]", "x $instance", "x{a=~b}"],
)
def test_parser_refuses_what_prometheus_would(broken):
    with pytest.raises(SyntaxError):
        metrics_in(broken)


def test_dashboard_uses_a_prometheus_datasource_variable():
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in walk(board["panels"]):
        for target in [panel, *panel.get("targets", [])]:
            if "datasource" in target:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [panel["id"] for panel in walk(board["panels"]) if "gridPos" in panel]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_metric_on_the_dashboard_is_exposed(closed_port):
    board = dashboard()
    queries = panel_queries(board) + variable_queries(board)
    named = set().union(*(metrics_in(query) for query in queries))
    # what the dashboard is for: every one of these is on it
    for needed in (
        "gproxy_connections_active",
        "gproxy_connections_accepted_total",
        "gproxy_sessions_total",
        "gproxy_bytes_up_total",
        "gproxy_bytes_down_total",
        "gproxy_dial_failures_total",
        "gproxy_upstream_up",
        "gproxy_upstream_dials_total",
        "gproxy_udp_datagrams_total",
        "gproxy_udp_dropped_total",
        "gproxy_auth_failures_total",
    ):
        assert needed in named, needed
    upstream = f"socks5://127.0.0.1:{closed_port}"
    running = start_gproxy("--socks", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--upstream", upstream, listeners=2)
    try:
        exposed = exposed_sample_names(running.port("metrics"))
    finally:
        assert running.stop() == 0
    assert named - exposed == set(), f"not in a /metrics scrape: {sorted(named - exposed)}"
