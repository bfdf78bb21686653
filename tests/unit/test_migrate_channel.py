"""The migration channel's injected faults, on a socketpair: what the peer sees of each."""

from __future__ import annotations

import socket

import pytest

from pyhv.vmm import migrate as mg
from pyhv.vmm.migrate import BUILT, GO, RESUMED, Channel, Fault

KEY = b"k" * 32


def _pair(*faults: Fault) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    b.settimeout(0.5)
    return Channel(a, KEY, faults), Channel(b, KEY)


def test_without_faults_frames_arrive_in_order() -> None:
    sender, receiver = _pair()
    sender.send(BUILT)
    sender.send(GO)
    assert [receiver.recv(0)[0], receiver.recv(0)[0]] == [BUILT, GO]


def test_a_dropped_frame_stalls_the_direction_and_the_peer_times_out() -> None:
    sender, receiver = _pair(Fault(GO, "drop"))
    sender.send(BUILT)
    sender.send(GO)
    sender.send(RESUMED)  # nothing after the dropped frame goes either
    assert receiver.recv(0)[0] == BUILT
    with pytest.raises(TimeoutError):
        receiver.recv(0)


def test_a_cut_fails_the_send_and_the_peer_sees_the_end() -> None:
    sender, receiver = _pair(Fault(GO, "cut"))
    with pytest.raises(ConnectionResetError, match="injected"):
        sender.send(GO)
    with pytest.raises(mg.MigrationError, match="connection closed"):
        receiver.recv(0)


def test_a_lost_frame_seems_sent_but_the_peer_sees_only_the_end() -> None:
    sender, receiver = _pair(Fault(GO, "lose"))
    sender.send(GO)
    with pytest.raises(mg.MigrationError, match="connection closed"):
        receiver.recv(0)


def test_a_cut_after_a_frame_delivers_it_then_the_end() -> None:
    sender, receiver = _pair(Fault(GO, "after"))
    sender.send(GO)
    assert receiver.recv(0)[0] == GO
    with pytest.raises(mg.MigrationError, match="connection closed"):
        receiver.recv(0)


def test_a_fault_hits_only_the_nth_frame_of_its_kind() -> None:
    sender, receiver = _pair(Fault(BUILT, "after", nth=2))
    sender.send(BUILT)
    sender.send(BUILT)
    assert [receiver.recv(0)[0], receiver.recv(0)[0]] == [BUILT, BUILT]
    with pytest.raises(mg.MigrationError, match="connection closed"):
        receiver.recv(0)


def test_a_fail_frame_raises_peer_failed_with_its_words() -> None:
    sender, receiver = _pair()
    sender.send(mg.FAIL, b"cannot build the machine here")
    with pytest.raises(mg.PeerFailed, match="gave up: cannot build the machine here"):
        receiver.recv(0)
