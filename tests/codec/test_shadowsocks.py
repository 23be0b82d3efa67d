"""Shadowsocks AEAD codec against streams recorded from shadowsocks-libev (ss-local, ss-server).

The vectors in data/shadowsocks/ come from record.py; they prove key derivation, subkeys,
nonces and framing byte for byte. The rest: splits, tampering, wrong keys, chunking, UDP.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproxy.codec import shadowsocks as ss
from gproxy.codec.socks5 import parse_address
from gproxy.core.addr import Address
from gproxy.core.errors import ClientProtocolError, ConfigError

DATA = Path(__file__).parent / "data" / "shadowsocks"
METHOD_NAMES = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())  # type: ignore[no-any-return]


def pattern(size: int) -> bytes:
    """Same generator as record.py."""
    return bytes(i % 251 for i in range(size))


def expected_plaintext(case: dict[str, Any]) -> bytes:
    payload = (
        pattern(case["payload_pattern_size"]) if "payload_pattern_size" in case else bytes.fromhex(case["payload_hex"])
    )
    plaintext = bytes.fromhex(case["header_hex"]) + payload
    assert hashlib.sha256(plaintext).hexdigest() == case["plaintext_sha256"]
    return plaintext


def vector_cases(kind: str) -> list[Any]:
    return [
        pytest.param(name, i, id=f"{name}-{kind}-{i}") for name in METHOD_NAMES for i in range(len(load(name)[kind]))
    ]


def key_and_method(record: dict[str, Any]) -> tuple[bytes, ss.Method]:
    method = ss.method_by_name(record["method"])
    return ss.derive_key(record["password"], method), method


# -- recorded vectors -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "index"), vector_cases("tcp_client"))
def test_decrypts_what_ss_local_sent(name: str, index: int) -> None:
    record = load(name)
    case = record["tcp_client"][index]
    key, method = key_and_method(record)
    decryptor = ss.TcpDecryptor(key, method)
    plaintext = decryptor.feed(bytes.fromhex(case["ciphertext_hex"]))
    assert plaintext == expected_plaintext(case)
    assert decryptor.salt == bytes.fromhex(case["ciphertext_hex"])[: method.salt_size]
    assert decryptor.needed == ss.LENGTH_CHUNK_SIZE  # clean end: nothing half-read
    parsed = parse_address(plaintext, 0)
    assert parsed is not None
    assert parsed[0] in (Address("example.com", 80), Address("192.0.2.7", 8443))


@pytest.mark.parametrize(("name", "index"), vector_cases("tcp_server"))
def test_decrypts_what_ss_server_sent(name: str, index: int) -> None:
    record = load(name)
    case = record["tcp_server"][index]
    key, method = key_and_method(record)
    assert ss.TcpDecryptor(key, method).feed(bytes.fromhex(case["ciphertext_hex"])) == expected_plaintext(case)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_encryptor_reproduces_ss_server_bytes_with_its_salt(name: str) -> None:
    """Same key, salt and plaintext as ss-server's one-chunk reply: byte-identical output."""
    record = load(name)
    case = record["tcp_server"][0]
    key, method = key_and_method(record)
    ciphertext = bytes.fromhex(case["ciphertext_hex"])
    encryptor = ss.TcpEncryptor(key, method, salt=ciphertext[: method.salt_size])
    assert encryptor.encrypt(expected_plaintext(case)) == ciphertext


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n in METHOD_NAMES for k in ("udp_client", "udp_server")])
def test_udp_vectors(name: str, kind: str) -> None:
    record = load(name)
    case = record[kind][0]
    key, method = key_and_method(record)
    packet = bytes.fromhex(case["ciphertext_hex"])
    plaintext = ss.decrypt_udp(key, method, packet)
    assert plaintext == expected_plaintext(case)
    assert ss.encrypt_udp(key, method, plaintext, salt=packet[: method.salt_size]) == packet


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_try_keys_finds_the_user_from_the_first_chunk_only(name: str) -> None:
    record = load(name)
    key, method = key_and_method(record)
    stream = bytes.fromhex(record["tcp_client"][0]["ciphertext_hex"])
    others = [(f"user{i}", ss.derive_key(f"other-{i}", method)) for i in range(3)]
    head = stream[: method.tcp_header_size]
    assert ss.try_keys(method, [*others, ("alice", key), ("late", key)], head) == "alice"
    assert ss.try_keys(method, others, stream) is None
    with pytest.raises(ValueError):
        ss.try_keys(method, [("alice", key)], head[:-1])
    packet = bytes.fromhex(record["udp_client"][0]["ciphertext_hex"])
    found = ss.try_udp_keys(method, [*others, ("alice", key)], packet)
    assert found is not None
    assert found[0] == "alice"
    assert found[1] == expected_plaintext(record["udp_client"][0])
    assert ss.try_udp_keys(method, others, packet) is None


# -- splits ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_split_offset_decodes_the_same(name: str) -> None:
    record = load(name)
    key, method = key_and_method(record)
    for kind in ("tcp_client", "tcp_server"):
        case = record[kind][0]  # the small streams: every offset, plus byte by byte
        stream = bytes.fromhex(case["ciphertext_hex"])
        want = expected_plaintext(case)
        for cut in range(len(stream) + 1):
            decryptor = ss.TcpDecryptor(key, method)
            assert decryptor.feed(stream[:cut]) + decryptor.feed(stream[cut:]) == want, cut
        decryptor = ss.TcpDecryptor(key, method)
        assert b"".join(decryptor.feed(stream[i : i + 1]) for i in range(len(stream))) == want


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(METHOD_NAMES), cuts=st.lists(st.integers(min_value=0, max_value=20200), max_size=12))
def test_big_recorded_stream_split_anywhere(name: str, cuts: list[int]) -> None:
    record = load(name)
    key, method = key_and_method(record)
    case = record["tcp_client"][1]
    stream = bytes.fromhex(case["ciphertext_hex"])
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    decryptor = ss.TcpDecryptor(key, method)
    got = b"".join(decryptor.feed(bytearray(stream[a:b])) for a, b in zip(bounds, bounds[1:], strict=False))
    assert got == expected_plaintext(case)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(METHOD_NAMES),
    writes=st.lists(st.binary(max_size=300) | st.integers(0, 40000).map(pattern), max_size=5),
    step=st.integers(1, 20000),
)
def test_round_trip(name: str, writes: list[bytes], step: int) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("round trip", method)
    encryptor = ss.TcpEncryptor(key, method)
    stream = b"".join(encryptor.encrypt(w) for w in writes)
    decryptor = ss.TcpDecryptor(key, method)
    got = b"".join(decryptor.feed(memoryview(stream)[i : i + step]) for i in range(0, len(stream), step))
    assert got == b"".join(writes)


# -- chunking and framing ---------------------------------------------------------------


def chunk_lengths(stream: bytes, key: bytes, method: ss.Method) -> list[int]:
    """The plaintext length of each chunk, read with the codec's own primitives."""
    aead = ss.session_aead(key, stream[: method.salt_size], method)
    pos, nonce, sizes = method.salt_size, 0, []
    while pos < len(stream):
        raw = aead.decrypt(nonce.to_bytes(12, "little"), stream[pos : pos + 18], None)
        size = int.from_bytes(raw, "big")
        sizes.append(size)
        pos += 18 + size + 16
        nonce += 2
    assert pos == len(stream)
    return sizes


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_large_writes_are_cut_into_0x3fff_chunks(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("chunks", method)
    encryptor = ss.TcpEncryptor(key, method)
    stream = encryptor.encrypt(pattern(0x3FFF)) + encryptor.encrypt(pattern(2 * 0x3FFF + 5))
    assert stream.startswith(encryptor.salt)
    assert chunk_lengths(stream, key, method) == [0x3FFF, 0x3FFF, 0x3FFF, 5]
    assert encryptor.encrypt(b"") == b""


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_salt_is_sent_once_and_fresh_per_stream(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("salt", method)
    first, second = ss.TcpEncryptor(key, method), ss.TcpEncryptor(key, method)
    assert first.salt != second.salt
    a, b = first.encrypt(b"x"), first.encrypt(b"y")
    assert len(a) == method.salt_size + 18 + 1 + 16
    assert len(b) == 18 + 1 + 16
    with pytest.raises(ValueError):
        ss.TcpEncryptor(key, method, salt=b"short")
    with pytest.raises(ValueError):
        ss.TcpEncryptor(key[:-1], method)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_needed_counts_down_each_step(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("needed", method)
    stream = ss.TcpEncryptor(key, method).encrypt(b"abcdef")
    decryptor = ss.TcpDecryptor(key, method)
    assert decryptor.needed == method.salt_size
    assert decryptor.feed(stream[:5]) == b""
    assert decryptor.needed == method.salt_size - 5
    assert decryptor.feed(stream[5 : method.salt_size + 3]) == b""
    assert decryptor.needed == 18 - 3
    assert decryptor.feed(stream[method.salt_size + 3 : method.salt_size + 18]) == b""
    assert decryptor.needed == 6 + 16
    assert decryptor.feed(stream[method.salt_size + 18 :]) == b"abcdef"
    assert decryptor.needed == 18


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_any_tampered_byte_is_an_error(name: str) -> None:
    record = load(name)
    key, method = key_and_method(record)
    stream = bytes.fromhex(record["tcp_server"][0]["ciphertext_hex"])
    for i in range(len(stream)):
        bad = bytearray(stream)
        bad[i] ^= 0x01
        with pytest.raises(ss.ShadowsocksError):
            ss.TcpDecryptor(key, method).feed(bad)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_wrong_key_does_not_open(name: str) -> None:
    record = load(name)
    _, method = key_and_method(record)
    wrong = ss.derive_key(record["password"] + "x", method)
    stream = bytes.fromhex(record["tcp_client"][0]["ciphertext_hex"])
    decryptor = ss.TcpDecryptor(wrong, method)
    with pytest.raises(ss.ShadowsocksError) as caught:
        decryptor.feed(stream)
    assert isinstance(caught.value, ClientProtocolError)
    assert record["password"] not in str(caught.value)
    packet = bytes.fromhex(record["udp_client"][0]["ciphertext_hex"])
    with pytest.raises(ss.ShadowsocksError):
        ss.decrypt_udp(wrong, method, packet)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_reserved_length_bits_are_rejected(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("reserved", method)
    salt = bytes(method.salt_size)
    aead = ss.session_aead(key, salt, method)
    stream = salt + aead.encrypt(bytes(12), (0x4000).to_bytes(2, "big"), None)
    with pytest.raises(ss.ShadowsocksError, match="reserved"):
        ss.TcpDecryptor(key, method).feed(stream)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_udp_packet_too_short_or_tampered(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("udp", method)
    packet = ss.encrypt_udp(key, method, b"")
    assert ss.decrypt_udp(key, method, packet) == b""
    with pytest.raises(ss.ShadowsocksError):
        ss.decrypt_udp(key, method, packet[:-1])
    tampered = bytearray(packet)
    tampered[-1] ^= 0x80
    with pytest.raises(ss.ShadowsocksError):
        ss.decrypt_udp(key, method, tampered)


def test_method_names() -> None:
    assert ss.method_by_name("AES-128-GCM") is ss.METHODS["aes-128-gcm"]
    assert ss.METHODS[ss.DEFAULT_METHOD].key_size == 32
    with pytest.raises(ConfigError, match="chacha20-ietf-poly1305"):
        ss.method_by_name("rc4-md5")


# -- encrypt_into / open_into (the stream's zero-copy paths) ------------------------------


@pytest.mark.parametrize(("name", "index"), vector_cases("tcp_client"))
@pytest.mark.parametrize("room", [ss.MAX_PAYLOAD, ss.MAX_PAYLOAD + 1, 1 << 16])
def test_open_into_reads_what_ss_local_sent(name: str, index: int, room: int) -> None:
    """Chunks are opened straight into the caller's buffer, as many whole payloads as fit."""
    record = load(name)
    case = record["tcp_client"][index]
    key, method = key_and_method(record)
    stream = memoryview(bytes.fromhex(case["ciphertext_hex"]))
    decryptor = ss.TcpDecryptor(key, method)
    out = memoryview(bytearray(room))
    got = b""
    for _ in range(len(stream)):  # bounded: every call uses at least a salt or a chunk
        used, written = decryptor.open_into(stream, out)
        got += out[:written]
        stream = stream[used:]
        if not stream:
            break
        assert used
    assert got == expected_plaintext(case)
    assert decryptor.needed == ss.LENGTH_CHUNK_SIZE


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_open_into_waits_for_whole_chunks_and_room(name: str) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("into", method)
    stream = ss.TcpEncryptor(key, method).encrypt(pattern(100) + pattern(0x3FFF + 7))  # chunks of 0x3FFF and 100 + 7
    decryptor = ss.TcpDecryptor(key, method)
    small = memoryview(bytearray(0x3FFF - 1))
    assert decryptor.open_into(stream[: method.salt_size - 1], small) == (0, 0)  # not even the salt: nothing used
    assert decryptor.open_into(stream[: method.salt_size + 5], small) == (method.salt_size, 0)
    rest = memoryview(stream)[method.salt_size :]
    assert decryptor.open_into(rest, small) == (18, 0)  # the length opens; its payload does not fit
    rest = rest[18:]
    big = memoryview(bytearray(1 << 16))
    assert decryptor.open_into(rest[:100], big) == (0, 0)  # the payload is not all there
    used, written = decryptor.open_into(rest, big)
    assert (used, written) == (len(rest), 0x3FFF + 107)
    assert big[:written] == pattern(100) + pattern(0x3FFF + 7)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_open_into_takes_over_from_feed(name: str) -> None:
    """The handshake feeds; the stream then opens in place once it took what feed held back."""
    method = ss.METHODS[name]
    key = ss.derive_key("handover", method)
    stream = ss.TcpEncryptor(key, method).encrypt(b"header" + pattern(50_000))
    decryptor = ss.TcpDecryptor(key, method)
    cut = method.salt_size + 18 + 5  # salt, length and 5 bytes of a 0x3FFF-byte payload: feed holds those 5
    assert decryptor.feed(stream[:cut]) == b""
    with pytest.raises(ValueError, match="take_buffered"):
        decryptor.open_into(stream[cut:], memoryview(bytearray(1 << 16)))
    held = decryptor.take_buffered()
    assert len(held) == 5
    out = memoryview(bytearray(1 << 16))
    assert decryptor.open_into(held + stream[cut:], out) == (len(held + stream[cut:]), 50_006)
    assert out[:50_006] == b"header" + pattern(50_000)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("size", [1, 0x3FFF, 0x3FFF + 1, 1 << 16, 100_000])
def test_encrypt_into_matches_encrypt_and_sealed_size(name: str, size: int) -> None:
    method = ss.METHODS[name]
    key = ss.derive_key("sealed", method)
    salt = bytes(range(method.salt_size))
    plain = pattern(size)
    into, whole = ss.TcpEncryptor(key, method, salt=salt), ss.TcpEncryptor(key, method, salt=salt)
    for _ in range(2):  # with the salt, then without
        need = into.sealed_size(size)
        out = memoryview(bytearray(need + 3))
        assert into.encrypt_into(plain, out) == need
        assert out[:need] == whole.encrypt(plain)
    assert into.sealed_size(0) == into.encrypt_into(b"", memoryview(bytearray())) == 0
    with pytest.raises(ValueError, match="too small"):
        into.encrypt_into(plain, memoryview(bytearray(into.sealed_size(size) - 1)))
