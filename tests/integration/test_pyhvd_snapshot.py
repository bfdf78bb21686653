"""pyhv save / restore / migrate through pyhvd, judged by what the guest printed.

The probe's ``ticker`` numbers its lines: a domain that is saved and restored,
or migrated, must go on from the next number, with none lost or repeated, and
without booting again."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyhv.toolstack.client import ApiError, Client

from .pyhvd import Daemon, daemon_fixture, ticks_in

pytestmark = pytest.mark.kvm

KEY = "0123456789abcdef-shared-migration-key"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from daemon_fixture(tmp_path)


def _consecutive(ticks: list[int]) -> None:
    assert ticks == list(range(1, len(ticks) + 1)), f"ticks lost or repeated: {ticks}"


def test_save_and_restore_go_on_where_the_guest_was(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("s", "ticker probe.n=50"))).returncode == 0
    d.ticks_reach("s", 3)
    # -c: saved, and runs on
    r = d.pyhv("save", "-c", "s", str(d.snapshots / "running.snap"))
    assert r.returncode == 0, r.stderr
    last = d.ticks("s")[-1]
    d.ticks_reach("s", last + 3)
    # -p: saved and left paused
    r = d.pyhv("save", "-p", "s", str(d.snapshots / "paused.snap"))
    assert r.returncode == 0, r.stderr
    assert d.domains()["s"]["state"] == "paused"
    assert d.pyhv("unpause", "s").returncode == 0
    # the default: saved, then destroyed
    d.ticks_reach("s", d.ticks("s")[-1] + 2)
    r = d.pyhv("save", "s", str(d.snapshots / "s.snap"))
    assert r.returncode == 0, r.stderr
    assert "s" not in d.domains()
    saved_at = d.ticks("s")[-1]
    time.sleep(0.3)
    assert d.ticks("s")[-1] == saved_at  # nothing runs while it is saved
    # restore: the same domain, going on from the next tick, not booting again
    r = d.pyhv("restore", str(d.snapshots / "s.snap"))
    assert r.returncode == 0, r.stderr
    assert d.domains()["s"]["state"] in ("running", "blocked")
    ticks = d.ticks_reach("s", saved_at + 5)
    _consecutive(ticks)
    assert d.console_log("s").count("probe: boot") == 1
    # a second copy under another name, from the earlier snapshot
    r = d.pyhv("restore", "--name", "s2", "-p", str(d.snapshots / "running.snap"))
    assert r.returncode == 0, r.stderr
    assert d.domains()["s2"]["state"] == "paused"
    # the same name twice is refused
    r = d.pyhv("restore", str(d.snapshots / "s.snap"))
    assert r.returncode == 1 and "already exists" in r.stderr


def test_bad_snapshots_are_refused_before_anything_runs(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("b", "ticker probe.n=50"))).returncode == 0
    good = d.snapshots / "b.snap"
    assert d.pyhv("save", "-c", "b", str(good)).returncode == 0
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "garbage": b"not a snapshot at all" * 10,
             "flipped": data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]}
    before = sorted(os.listdir(d.run_dir / "domains"))
    for label, content in cases.items():
        bad = d.snapshots / f"{label}.snap"
        bad.write_bytes(content)
        r = d.pyhv("restore", "--name", label, str(bad))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (label, r.stderr)
    r = d.pyhv("restore", str(d.snapshots / "missing.snap"))
    assert r.returncode == 2 and "cannot open" in r.stderr
    assert sorted(os.listdir(d.run_dir / "domains")) == before
    assert sorted(d.domains()) == ["b"]


def test_save_and_restore_stay_in_the_snapshot_directory_and_replace_nothing_else(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("w", "ticker probe.n=50"))).returncode == 0
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (d.snapshots / "escape.snap").symlink_to(outside)
    (d.snapshots / "notes.txt").write_text("not a snapshot\n")
    refused = {}
    for path in (outside, d.snapshots / "escape.snap", d.snapshots / ".." / "w.snap"):
        with pytest.raises(ApiError) as e:
            d.client.post("/domains/w/save", {"path": str(path), "then": "continue", "force": True})
        refused[str(path)] = (e.value.http_status, str(e.value))
    with pytest.raises(ApiError) as e:
        d.client.post("/restore", {"path": str(outside)})
    refused["restore"] = (e.value.http_status, str(e.value))
    assert all(status == 403 and "outside the snapshot directory" in message and "\n" not in message
               for status, message in refused.values()), refused
    # inside it: an existing file is replaced only with --force, and only if it is a snapshot
    r = d.pyhv("save", "-c", "--force", "w", str(d.snapshots / "notes.txt"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a pyhv snapshot" in r.stderr, r.stderr
    snap = d.snapshots / "w.snap"
    assert d.pyhv("save", "-c", "w", str(snap)).returncode == 0
    r = d.pyhv("save", "-c", "w", str(snap))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "it exists" in r.stderr, r.stderr
    r = d.pyhv("save", "-c", "--force", "w", str(snap))
    assert r.returncode == 0, r.stderr
    assert outside.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert (d.snapshots / "notes.txt").read_text() == "not a snapshot\n"
    assert sorted(p.name for p in d.snapshots.iterdir()) == ["escape.snap", "notes.txt", "w.snap"]
    assert d.domains()["w"]["state"] in ("running", "blocked")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_live_migration_between_two_pyhvd(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY)
    other_key = tmp_path / "other-key"
    other_key.write_text("a-different-key-entirely-0000")
    port = _free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    source = Daemon(tmp_path / "a", "--migration-key", str(key))
    dest = Daemon(tmp_path / "b", "--migration-key", str(key), "--migration-listen", f"127.0.0.1:{port}")
    stranger = Daemon(tmp_path / "c", "--migration-key", str(other_key))
    try:
        for d in (source, dest, stranger):
            d.start()
        assert source.pyhv("create", str(source.config("m", "ticker probe.n=50"))).returncode == 0
        source.ticks_reach("m", 3)

        # a source without the key gets nowhere
        assert stranger.pyhv("create", str(stranger.config("m", "ticker probe.n=50"))).returncode == 0
        r = stranger.pyhv("migrate", "m", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "runs on here" in r.stderr, r.stderr
        assert "m" in stranger.domains() and "m" not in dest.domains()
        stranger.ticks_reach("m", stranger.ticks("m")[-1] + 2)

        # the real migration: the guest goes on over there from the next tick
        r = source.pyhv("migrate", "m", f"127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr + dest.log()
        assert "m" not in source.domains()
        assert dest.domains()["m"]["state"] in ("running", "blocked")
        left_at = source.ticks("m")[-1]
        dest.ticks_reach("m", left_at + 5)
        # a line the guest was writing when it left is finished over there
        _consecutive(ticks_in(source.console_log("m") + dest.console_log("m")))
        assert "probe: boot" not in dest.console_log("m")

        # the destination refuses a second domain of the same name; the source runs on
        assert source.pyhv("create", str(source.config("m", "ticker probe.n=50"))).returncode == 0
        source.ticks_reach("m", 1)
        r = source.pyhv("migrate", "m", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
        assert "m" in source.domains()
        before = source.ticks("m")[-1]
        source.ticks_reach("m", before + 2)
    finally:
        for d in (source, dest, stranger):
            d.cleanup()


@pytest.mark.parametrize("then", ["pause", "destroy", "continue"])
def test_a_failed_save_leaves_the_domain_running_as_before(daemon: Daemon, then: str) -> None:
    d = daemon
    assert d.pyhv("create", str(d.config("f", "ticker probe.n=50"))).returncode == 0
    d.ticks_reach("f", 2)
    with pytest.raises(ApiError) as e:
        d.client.post("/domains/f/save", {"path": str(d.snapshots / "no-such-dir" / "f.snap"), "then": then})
    assert e.value.http_status == 409 and "cannot create" in str(e.value) and "\n" not in str(e.value)
    assert d.domains()["f"]["state"] in ("running", "blocked")
    d.ticks_reach("f", d.ticks("f")[-1] + 2)
    assert sorted(p.name for p in d.snapshots.iterdir()) == []


def test_a_failed_save_of_a_paused_domain_leaves_it_paused(daemon: Daemon) -> None:
    d = daemon
    assert d.pyhv("create", "-p", str(d.config("f", "ticker probe.n=50"))).returncode == 0
    r = d.pyhv("save", "-p", "f", str(d.snapshots / "no-such-dir" / "f.snap"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot create" in r.stderr, r.stderr
    assert d.domains()["f"]["state"] == "paused"


def test_restore_of_a_fifo_or_a_directory_is_refused_at_once(daemon: Daemon) -> None:
    d = daemon
    os.mkfifo(d.snapshots / "fifo.snap")
    (d.snapshots / "dir.snap").mkdir()
    client = Client(d.socket, timeout=5)
    answers = {}
    for name in ("fifo.snap", "dir.snap"):
        with pytest.raises(ApiError) as e:
            client.post("/restore", {"path": str(d.snapshots / name)})
        answers[name] = (e.value.http_status, str(e.value))
    assert answers == {name: (400, f"cannot open snapshot {d.snapshots / name}: not a regular file")
                       for name in answers}
    assert d.domains() == {} and os.listdir(d.run_dir / "domains") == []


def test_restore_verify_refuses_corrupt_memory_before_the_domain_runs(daemon: Daemon) -> None:
    from pyhv.vmm.snapshot import Snapshot

    d = daemon
    assert d.pyhv("create", str(d.config("v", "ticker probe.n=50"))).returncode == 0
    d.ticks_reach("v", 2)
    snap = d.snapshots / "v.snap"
    assert d.pyhv("save", "v", str(snap)).returncode == 0
    snapshot = Snapshot(str(snap))
    offset = snapshot.extents[0][0]
    snapshot.close()
    with open(snap, "r+b") as f:
        byte = os.pread(f.fileno(), 1, offset + 7)
        os.pwrite(f.fileno(), bytes([byte[0] ^ 0x55]), offset + 7)
    log_before = d.console_log("v")
    r = d.pyhv("restore", "--verify", str(snap))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "CRC mismatch" in r.stderr, r.stderr
    assert "v" not in d.domains() and os.listdir(d.run_dir / "domains") == []
    assert d.console_log("v") == log_before  # the guest never ran
    r = d.pyhv("restore", str(snap))  # without --verify the damage goes unseen
    assert r.returncode == 0, r.stderr
