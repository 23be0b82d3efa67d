"""The atheris harness itself runs (a short coverage-guided run per codec).

``tox -e fuzz`` runs it for minutes; here every target gets a few thousand
inputs so a broken harness or a shallow crash shows up in the default suite.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, gproxy_env

pytest.importorskip("atheris")


def test_atheris_short_run_over_every_codec() -> None:
    runs = os.environ.get("GPROXY_FUZZ_RUNS", "3000")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", "30", "--runs", runs],
        capture_output=True,
        text=True,
        env=gproxy_env(),
        cwd=ROOT,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "crashed: none" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if ": ok" in line]
    assert lines, proc.stdout
    assert all(int(line.split(": ")[1].split()[0]) >= int(runs) for line in lines), proc.stdout
