"""Property tests over every codec in ``codecs.TARGETS`` (hypothesis).

Any input either parses, asks for more bytes, or raises ClientProtocolError;
a parsed message does not change when more bytes follow it, every strict
prefix of it asks for more, and parse of encode round-trips.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.robustness.codecs import TARGETS, Target, check_input, check_parse, check_value

FUZZ = settings(
    max_examples=int(os.environ.get("GPROXY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _mutated(seeds: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    """Valid inputs with bytes replaced, inserted, cut or appended."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["set", "insert", "cut", "append", "truncate"]))
            pos = draw(st.integers(0, len(data)))
            if op == "set" and data:
                data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(max_size=8))
            elif op == "cut":
                del data[pos : pos + draw(st.integers(1, 8))]
            elif op == "append":
                data += draw(st.binary(max_size=300))
            else:
                del data[pos:]
        return bytes(data)

    return mutate()


def _inputs(target: Target) -> st.SearchStrategy[bytes]:
    strategies = [st.binary(max_size=600)]
    if target.seeds:
        strategies.append(_mutated(target.seeds))
    return st.one_of(*strategies)


IDS = [t.name for t in TARGETS]


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_any_input_parses_asks_for_more_or_is_a_protocol_error(target: Target) -> None:
    parse = target.load()

    @FUZZ
    @given(_inputs(target))
    def run(data: bytes) -> None:
        # more bytes after a whole message change nothing about it
        result = check_input(target, parse, data, trailing=b"\x00\xff trailing")
        if result is None:
            return
        used = result[1]
        # every strict prefix of a whole message only asks for more
        for cut in range(used):
            prefix = bytearray(data[:cut])
            assert parse(prefix) is None, f"prefix of {cut} bytes of {data[:used]!r} did not ask for more"

    run()


@pytest.mark.parametrize("target", [t for t in TARGETS if t.encode], ids=[t.name for t in TARGETS if t.encode])
def test_parse_of_encode_round_trips(target: Target) -> None:
    """Whatever parses, encoded again, parses to a message that encodes the same:
    encoders normalise (IPv4-mapped IPv6 to IPv4, names to IDNA) exactly once."""
    parse = target.load()
    assert target.encode is not None

    @FUZZ
    @given(_inputs(target))
    @example(target.seeds[0])
    def run(data: bytes) -> None:
        result = check_parse(parse, data, datagram=target.datagram)
        if result is None:
            return
        try:
            wire = target.encode(result[0])  # type: ignore[misc]
        except ValueError:
            return  # not encodable (e.g. a name IDNA refuses): the encoder says so itself
        reparsed = check_parse(parse, wire, datagram=target.datagram)
        assert reparsed is not None, f"{wire!r} (encoded from {data!r}) does not parse"
        assert reparsed[1] == len(wire)
        assert target.encode(reparsed[0]) == wire  # type: ignore[misc]

    run()


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_seeds_are_valid(target: Target) -> None:
    """The seed corpus is made of whole messages (else mutation starts from junk)."""
    parse = target.load()
    for seed in target.seeds:
        if target.value:
            check_value(parse, seed)
            continue
        assert check_parse(parse, seed, datagram=target.datagram) is not None, seed
