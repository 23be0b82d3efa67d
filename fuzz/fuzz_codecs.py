"""Coverage-guided fuzzing of one codec parser with atheris (libFuzzer).

    python fuzz/fuzz_codecs.py TARGET [libFuzzer flags] [CORPUS_DIR...]
    python fuzz/fuzz_codecs.py --list

TARGET is a name from ``tests/robustness/codecs.py`` (the same table the
hypothesis tests walk). A crash is any exception other than
ClientProtocolError, or a broken parse contract; libFuzzer saves the input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["gproxy"]):
    from tests.robustness.codecs import TARGETS, check_input

    for _target in TARGETS:  # every codec module imported here, so it is instrumented
        _target.load()


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] == "--list":
        print("\n".join(t.name for t in TARGETS))
        return
    name = sys.argv.pop(1)
    targets = {t.name: t for t in TARGETS}
    if name not in targets:
        sys.exit(f"unknown target {name!r}; --list shows them")
    target = targets[name]
    parse = target.load()

    def one_input(data: bytes) -> None:
        check_input(target, parse, data, trailing=b"\x00")

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
