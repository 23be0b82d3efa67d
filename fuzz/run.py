"""Run the atheris harness over every codec, each for a bounded time.

    python fuzz/run.py [--seconds N] [--runs N] [--write-seeds]

Each target starts from ``fuzz/corpus/TARGET`` (kept in the repo) and writes
what it discovers to a scratch directory, so the repo corpus only changes on
purpose (``--write-seeds`` refreshes it from the seeds in the codec table).
Exit status is non-zero if any target crashed; the crashing input is saved
as ``fuzz/crash-*`` by libFuzzer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.robustness.codecs import available  # noqa: E402


def write_seeds() -> None:
    for target, _ in available():
        folder = HERE / "corpus" / target.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(target.seeds):
            (folder / f"seed-{i}").write_bytes(seed)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60, help="per target (libFuzzer -max_total_time)")
    parser.add_argument("--runs", type=int, default=0, help="per target (libFuzzer -runs); 0: time only")
    parser.add_argument("--write-seeds", action="store_true")
    parser.add_argument("targets", nargs="*")
    args = parser.parse_args()
    if args.write_seeds:
        write_seeds()
    failed = []
    total_runs = 0
    for target, _ in available():
        if args.targets and target.name not in args.targets:
            continue
        corpus = HERE / "corpus" / target.name
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as scratch:
            cmd = [
                sys.executable,
                str(HERE / "fuzz_codecs.py"),
                target.name,
                f"-max_total_time={args.seconds}",
                "-max_len=4096",
                "-timeout=5",
                f"-artifact_prefix={HERE}/crash-{target.name}-",
                "-print_final_stats=1",
            ]
            if args.runs:
                cmd.append(f"-runs={args.runs}")
            cmd += [scratch, str(corpus)]
            started = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            runs = next(
                (
                    int(line.rsplit(":", 1)[1])
                    for line in proc.stderr.splitlines()
                    if line.startswith("stat::number_of_executed_units")
                ),
                0,
            )
            total_runs += runs
            status = "ok" if proc.returncode == 0 else f"CRASH (exit {proc.returncode})"
            print(f"{target.name}: {runs} inputs in {time.monotonic() - started:.0f}s: {status}", flush=True)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                failed.append(target.name)
    print(f"total: {total_runs} inputs; crashed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
