"""AccessLog: a loop iteration's lines go out together, before the loop waits again; none is lost
at close or at a rotation."""

from __future__ import annotations

import gevent

from gproxy.core.log import AccessLog


def test_lines_of_one_iteration_go_out_in_one_write(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    writes = []
    real_write = log._file.write
    log._file.write = lambda data: writes.append(data) or real_write(data)  # type: ignore[method-assign]
    try:
        for n in range(5):
            log.write(f"line={n}")
        assert path.read_text() == ""  # queued: nothing written while this greenlet runs
        gevent.sleep(0)  # the loop runs its callbacks before it waits
        assert path.read_text().splitlines() == [f"line={n}" for n in range(5)]
        assert len(writes) == 1
        log.write("line=5")
        gevent.sleep(0)
        assert path.read_text().splitlines()[-1] == "line=5" and len(writes) == 2
    finally:
        log.close()


def test_close_writes_what_is_queued(tmp_path, caplog):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write("last=1")
    log.close()
    assert path.read_text() == "last=1\n"
    log.flush()  # what the queued callback runs later: nothing left, so no write to the closed file
    gevent.sleep(0)  # the queued callback itself, too
    assert "access log" not in caplog.text  # a write to the closed file would warn


def test_a_rotation_sends_earlier_lines_to_the_old_file(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    try:
        log.write("before=1")
        path.rename(tmp_path / "access.log.1")
        assert log.reopen()
        log.write("after=1")
        gevent.sleep(0)
        assert (tmp_path / "access.log.1").read_text() == "before=1\n"
        assert path.read_text() == "after=1\n"
    finally:
        log.close()
