"""Shadowsocks AEAD codec alone: MB/s of encrypt + decrypt per method, no sockets.

    PYTHONPATH=$PWD python bench/ss_codec.py [--mib 64] [--write-bytes 16384]

Encrypts --mib MiB in --write-bytes writes into a reused buffer (``encrypt_into``, as SsSocket
does), opens each write's ciphertext into a reused 64 KiB buffer (``open_into``), and prints
plaintext MB/s (1 MB = 10^6 bytes) for each direction and the pair. A 16 KiB write is one 0x3FFF
chunk plus a 1-byte one; try --write-bytes 16383 to see what that costs.
"""

from __future__ import annotations

import argparse
import os
import time

from gproxy.codec import shadowsocks as ss


def run(method: ss.Method, total: int, write: int) -> tuple[float, float]:
    key = ss.derive_key("bench", method)
    block = os.urandom(write)
    encryptor, decryptor = ss.TcpEncryptor(key, method), ss.TcpDecryptor(key, method)
    sealed = memoryview(bytearray(encryptor.sealed_size(write)))
    plain = memoryview(bytearray(max(1 << 16, write)))
    count = total // write
    clock = time.perf_counter
    enc_time = dec_time = 0.0
    got = 0
    for _ in range(count):  # interleaved, as a relay does: memory stays flat
        t0 = clock()
        n = encryptor.encrypt_into(block, sealed)
        t1 = clock()
        pos = 0
        while pos < n:
            used, written = decryptor.open_into(sealed[pos:n], plain)
            assert used, "open_into made no progress"
            pos += used
            got += written
        t2 = clock()
        enc_time += t1 - t0
        dec_time += t2 - t1
    assert got == count * write
    return enc_time, dec_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--write-bytes", type=int, default=16384)
    args = parser.parse_args()
    total, write = args.mib << 20, args.write_bytes
    print(f"{args.mib} MiB in {write}-byte writes; MB/s of plaintext")
    print(f"{'method':24} {'encrypt':>9} {'decrypt':>9} {'enc+dec':>9}")
    for method in ss.METHODS.values():
        enc, dec = run(method, total, write)
        print(f"{method.name:24} {total / enc / 1e6:9.0f} {total / dec / 1e6:9.0f} {total / (enc + dec) / 1e6:9.0f}")


if __name__ == "__main__":
    main()
