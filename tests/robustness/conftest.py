"""Fixtures for the robustness suites: a loopback-only proxy per listener kind."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gproxy.core.addr import Address
from tests.robustness.live import Probe, available_probes, sandbox_proxy


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``probe`` parametrises a test over every listener kind on this branch."""
    if "probe" in metafunc.fixturenames:
        probes = available_probes()
        metafunc.parametrize("probe", probes, ids=[p.name for p in probes])


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def gproxy_warnings() -> Iterator[list[logging.LogRecord]]:
    """gproxy log records at WARNING and above during the test."""
    handler = _Collect()
    log = logging.getLogger("gproxy")
    log.addHandler(handler)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)


@pytest.fixture
def sandbox():
    """``sandbox(probe, dest, **settings)`` -> a started loopback-only Proxy (``dest``: a
    forwarder's target); stopped after the test."""
    started = []

    def factory(probe: Probe, dest: Address | None = None, **settings: object):  # type: ignore[no-untyped-def]
        running = sandbox_proxy(**{**probe.settings(dest), **settings})
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop(0)
