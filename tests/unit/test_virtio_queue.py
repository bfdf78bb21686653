"""The split virtqueue, seen from a fake driver, including a hostile one.

The fuzz tests run ``PYHV_FUZZ_EXAMPLES`` examples each (200 by default); for
a long run::

    PYHV_FUZZ_EXAMPLES=20000 pytest tests/unit/test_virtio_queue.py
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.virtio.queue import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Buffer,
    DescriptorChain,
    QueueError,
    SplitQueue,
    need_event,
)
from pyhv.errors import PyhvError
from pyhv.memory import GiB, GuestMemory, MiB

from .virtio_fakes import ALL_FEATURES, BASIC_FEATURES, FakeDriver, FakeGuestRam, desc_entry

RAM_SIZE = 0x10000
NO_EVENT_IDX = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC)
FUZZ_EXAMPLES = int(os.environ.get("PYHV_FUZZ_EXAMPLES", "200"))


@pytest.fixture
def mem() -> FakeGuestRam:
    return FakeGuestRam(RAM_SIZE)


@pytest.fixture
def driver(mem: FakeGuestRam) -> FakeDriver:
    return FakeDriver(mem, size=8)


def popped(q: SplitQueue) -> DescriptorChain:
    chain = q.pop()
    assert chain is not None
    return chain


# --- popping ------------------------------------------------------------------------------


def test_pop_returns_chains_in_the_order_they_were_made_available(driver: FakeDriver) -> None:
    q = driver.make_queue()
    heads = [driver.add_chain(readable=[b"req%d" % i]) for i in range(3)]

    chains = [popped(q) for _ in range(3)]

    assert [c.head for c in chains] == heads


def test_pop_on_an_empty_ring_returns_none(driver: FakeDriver) -> None:
    q = driver.make_queue()

    assert q.pop() is None


def test_pop_after_the_last_chain_returns_none(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"only"])
    q.pop()

    assert q.pop() is None


def test_pop_on_a_queue_never_activated_returns_none_without_touching_memory(
    mem: FakeGuestRam, driver: FakeDriver
) -> None:
    q = SplitQueue(mem)
    driver.program(q)
    driver.add_chain(readable=[b"x"])
    mem.log = []

    assert q.pop() is None
    assert mem.log == []


def test_has_available_reports_a_published_chain(driver: FakeDriver) -> None:
    q = driver.make_queue()
    before = q.has_available()
    driver.add_chain(readable=[b"x"])

    assert (before, q.has_available()) == (False, True)


def test_chain_splits_into_readable_then_writable_buffers(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"header", b"payload"], writable=[16, 1])

    chain = popped(q)

    assert [b.length for b in chain.readable] == [6, 7]
    assert [b.length for b in chain.writable] == [16, 1]
    assert [b.writable for b in chain.readable + chain.writable] == [False, False, True, True]
    assert (chain.readable_len(), chain.writable_len()) == (13, 17)
    assert mem.read(chain.readable[1].addr, 7) == b"payload"


def test_chain_as_long_as_the_queue_is_accepted(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"%d" % i for i in range(8)])

    chain = popped(q)

    assert len(chain.readable) == 8


def test_read_all_concatenates_the_readable_buffers(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"abc", b"def", b"g"], writable=[4])

    assert popped(q).read_all(mem, 100) == b"abcdefg"


def test_read_all_returns_at_most_limit_bytes(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"abc", b"def"])

    assert popped(q).read_all(mem, 4) == b"abcd"


def test_write_at_spans_several_writable_buffers(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"hdr"], writable=[4, 4, 4])
    chain = popped(q)

    written = chain.write_at(mem, 2, b"abcdefgh")

    assert written == 8
    assert [mem.read(b.addr, 4) for b in chain.writable] == [b"\0\0ab", b"cdef", b"gh\0\0"]


def test_write_at_stops_at_the_end_of_the_writable_buffers(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(writable=[4, 4])
    after = driver.alloc(16, b"\x77" * 16)  # the next buffer in guest memory
    chain = popped(q)

    written = chain.write_at(mem, 6, b"0123456789")

    assert written == 2
    assert mem.read(chain.writable[1].addr, 4) == b"\x00\x0001"
    assert mem.read(after, 16) == b"\x77" * 16


def test_write_at_past_the_writable_bytes_writes_nothing(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(writable=[4])

    assert popped(q).write_at(mem, 4, b"x") == 0


# --- the used ring -------------------------------------------------------------------------------


def test_push_used_writes_id_len_and_idx(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"a"])
    head = driver.add_chain(readable=[b"b"], writable=[32])
    q.pop()
    chain = popped(q)

    q.push_used(chain, 20)

    assert driver.used_idx() == 1
    assert driver.used_elem(0) == (head, 20)


def test_push_used_publishes_the_element_and_the_index(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    head = driver.add_chain(writable=[8])
    chain = popped(q)

    q.push_used(chain, 8)

    assert (driver.used_elem(0), driver.used_idx()) == ((head, 8), 1)


def test_push_used_without_publish_leaves_used_idx_until_publish_used(driver: FakeDriver) -> None:
    q = driver.make_queue()
    heads = [driver.add_chain(writable=[8]) for _ in range(3)]
    for _ in heads:
        q.push_used(popped(q), 4, publish=False)
    before = driver.used_idx()

    q.publish_used()

    assert (before, driver.used_idx(), [driver.used_elem(i) for i in range(3)]) == (
        0,
        3,
        [(h, 4) for h in heads],
    )


def test_should_notify_publishes_a_pending_batch_first(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0, publish=False)

    notified = q.should_notify()

    assert (notified, driver.used_idx()) == (True, 1)


def test_single_descriptor_chain_reports_its_lengths(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"abcdef"])
    driver.add_chain(writable=[40])

    first, second = popped(q), popped(q)

    assert (first.readable_len(), first.writable_len(), second.readable_len(), second.writable_len()) == (
        6,
        0,
        0,
        40,
    )


def test_push_used_refuses_more_bytes_than_the_chain_can_hold(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"r"], writable=[4])
    chain = popped(q)

    with pytest.raises(ValueError):
        q.push_used(chain, 5)


def test_chain_popped_before_a_reset_is_dropped_when_pushed_after_it(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(writable=[4])
    stale = popped(q)
    q.reset()
    driver.program(q)
    q.activate(ALL_FEATURES)

    q.push_used(stale, 4)

    assert driver.used_idx() == 0


def test_indices_wrap_past_0xffff(driver: FakeDriver) -> None:
    q = driver.make_queue()
    q.set_state(q.state() | {"last_avail_idx": 0xFFFE, "used_idx": 0xFFFE})
    driver.set_avail_idx(0xFFFE)
    heads = [driver.add_chain(writable=[4]) for _ in range(4)]

    chains = [popped(q) for _ in range(4)]
    for chain in chains:
        q.push_used(chain, 4)

    assert [c.head for c in chains] == heads
    assert (driver.avail_idx, driver.used_idx(), q.last_avail_idx) == (2, 2, 2)
    assert [driver.used_elem(i) for i in (0xFFFE, 0xFFFF, 0, 1)] == [(h, 4) for h in heads]


def test_a_full_cycle_of_65536_requests_keeps_the_rings_in_step(mem: FakeGuestRam) -> None:
    one = FakeDriver(mem, size=1)
    q = one.make_queue()
    addr = one.alloc(4)
    one.write_desc(0, addr, 4, VIRTQ_DESC_F_WRITE)

    for _ in range(0x10001):
        one.publish(0)
        q.push_used(popped(q), 4)

    assert (one.avail_idx, one.used_idx(), q.last_avail_idx, q.used_idx) == (1, 1, 1, 1)


# --- indirect descriptors -----------------------------------------------------------------------


def test_indirect_chain_yields_the_buffers_of_its_table(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    head = driver.add_indirect(readable=[b"hdr", b"data"], writable=[8, 1])

    chain = popped(q)

    assert chain.head == head
    assert [b.length for b in chain.readable] == [3, 4]
    assert [b.length for b in chain.writable] == [8, 1]
    assert chain.read_all(mem, 100) == b"hdrdata"


def test_direct_descriptors_may_precede_an_indirect_one(driver: FakeDriver) -> None:
    q = driver.make_queue()
    hdr = driver.alloc(4, b"head")
    table = desc_entry(driver.alloc(2, b"xy"), 2, VIRTQ_DESC_F_NEXT, 1) + desc_entry(
        driver.alloc(8), 8, VIRTQ_DESC_F_WRITE
    )
    driver.write_desc(0, hdr, 4, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(1, driver.alloc(len(table), table), len(table), VIRTQ_DESC_F_INDIRECT)
    driver.publish(0)

    chain = popped(q)

    assert [(b.length, b.writable) for b in chain.readable + chain.writable] == [
        (4, False),
        (2, False),
        (8, True),
    ]


def test_indirect_table_as_long_as_the_queue_is_accepted(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    table = b"".join(
        desc_entry(buf, 1, VIRTQ_DESC_F_NEXT, i + 1) for i in range(driver.size - 1)
    ) + desc_entry(buf, 1)
    driver.add_indirect_table(table)

    assert popped(q).readable_len() == driver.size


# --- the hostile driver: chains -----------------------------------------------------------------


def test_descriptor_loop_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(4)
    driver.write_desc(0, buf, 4, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(1, buf, 4, VIRTQ_DESC_F_NEXT, 0)
    driver.publish(0)

    with pytest.raises(QueueError, match="longer than the queue size"):
        q.pop()


def test_chain_longer_than_the_queue_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(4)
    for i in range(8):
        driver.write_desc(i, buf, 4, VIRTQ_DESC_F_NEXT, (i + 1) % 8)
    driver.publish(3)

    with pytest.raises(QueueError, match="longer than the queue size"):
        q.pop()


def test_next_out_of_range_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.write_desc(0, driver.alloc(4), 4, VIRTQ_DESC_F_NEXT, 8)
    driver.publish(0)

    with pytest.raises(QueueError, match="next 8"):
        q.pop()


@pytest.mark.parametrize(
    ("addr", "length"),
    [(RAM_SIZE - 2, 4), (RAM_SIZE, 1), (2**64 - 1, 2), (0, 0xFFFF_FFFF)],
    ids=["straddles-end", "past-end", "top-of-address-space", "huge"],
)
def test_buffer_outside_ram_raises_queue_error(driver: FakeDriver, addr: int, length: int) -> None:
    q = driver.make_queue()
    driver.write_desc(0, addr, length)
    driver.publish(0)

    with pytest.raises(QueueError, match="not inside guest RAM"):
        q.pop()


def test_zero_length_descriptor_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.write_desc(0, driver.alloc(4), 0)
    driver.publish(0)

    with pytest.raises(QueueError, match="length 0"):
        q.pop()


def test_readable_after_writable_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.write_desc(0, driver.alloc(4), 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(1, driver.alloc(4), 4)
    driver.publish(0)

    with pytest.raises(QueueError, match="readable after a device-writable"):
        q.pop()


@pytest.fixture
def big_memory() -> Iterator[GuestMemory]:
    m = GuestMemory(3 * GiB)  # reserved lazily: untouched pages cost nothing
    yield m
    m.close()


def test_chain_of_more_than_4_gib_raises_queue_error(big_memory: GuestMemory) -> None:
    driver = FakeDriver(big_memory, size=4)
    q = driver.make_queue()
    driver.write_desc(0, 0, 3 * GiB, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(1, 0, 3 * GiB)
    driver.publish(0)

    with pytest.raises(QueueError, match="more than 4294967295 bytes"):
        q.pop()


# --- the hostile driver: indirect tables ----------------------------------------------------------


def test_indirect_without_the_feature_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue(features=BASIC_FEATURES)
    driver.add_indirect(readable=[b"x"])

    with pytest.raises(QueueError, match="VIRTIO_F_INDIRECT_DESC"):
        q.pop()


@pytest.mark.parametrize("length", [0, 8, 24], ids=["zero", "half-entry", "one-and-a-half"])
def test_indirect_with_bad_length_raises_queue_error(driver: FakeDriver, length: int) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    driver.add_indirect_table(desc_entry(buf, 1) * 2, length=length)

    with pytest.raises(QueueError, match="multiple of 16"):
        q.pop()


def test_indirect_table_longer_than_the_queue_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    driver.add_indirect_table(desc_entry(buf, 1) * (driver.size + 1))

    with pytest.raises(QueueError, match="entries, more than"):
        q.pop()


def test_indirect_table_outside_ram_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.write_desc(0, RAM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT)
    driver.publish(0)

    with pytest.raises(QueueError, match="not inside guest RAM"):
        q.pop()


def test_nested_indirect_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    inner = driver.alloc(16, desc_entry(driver.alloc(1), 1))
    driver.add_indirect_table(desc_entry(inner, 16, VIRTQ_DESC_F_INDIRECT))

    with pytest.raises(QueueError, match="nested"):
        q.pop()


def test_indirect_together_with_next_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_indirect_table(desc_entry(driver.alloc(1), 1), flags=VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)

    with pytest.raises(QueueError, match="both INDIRECT and NEXT"):
        q.pop()


def test_loop_inside_an_indirect_table_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    driver.add_indirect_table(
        desc_entry(buf, 1, VIRTQ_DESC_F_NEXT, 1) + desc_entry(buf, 1, VIRTQ_DESC_F_NEXT, 0)
    )

    with pytest.raises(QueueError, match="a loop"):
        q.pop()


def test_indirect_next_out_of_range_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    driver.add_indirect_table(desc_entry(buf, 1, VIRTQ_DESC_F_NEXT, 2) + desc_entry(buf, 1))

    with pytest.raises(QueueError, match="next 2 is not below 2"):
        q.pop()


def test_readable_after_writable_inside_an_indirect_table_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    buf = driver.alloc(1)
    driver.add_indirect_table(
        desc_entry(buf, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1) + desc_entry(buf, 1)
    )

    with pytest.raises(QueueError, match="readable after a device-writable"):
        q.pop()


def test_zero_length_entry_inside_an_indirect_table_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_indirect_table(desc_entry(driver.alloc(1), 0))

    with pytest.raises(QueueError, match="length 0"):
        q.pop()


def test_buffer_outside_ram_inside_an_indirect_table_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_indirect_table(desc_entry(RAM_SIZE - 1, 2))

    with pytest.raises(QueueError, match="not inside guest RAM"):
        q.pop()


# --- the hostile driver: the available ring -------------------------------------------------------


def test_avail_idx_jumping_by_more_than_the_queue_size_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.set_avail_idx(9)

    with pytest.raises(QueueError, match="more than the queue size"):
        q.pop()


def test_avail_idx_jumping_backwards_raises_queue_error_from_has_available(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.set_avail_idx(0xFFFF)

    with pytest.raises(QueueError, match="more than the queue size"):
        q.has_available()


def test_avail_idx_a_whole_queue_ahead_is_accepted(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.write_desc(0, driver.alloc(4), 4)
    driver.set_avail_idx(8)  # every ring slot still says head 0

    assert [popped(q).head for _ in range(8)] == [0] * 8


def test_head_out_of_range_raises_queue_error(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.publish(8)

    with pytest.raises(QueueError, match="head 8"):
        q.pop()


def test_memory_access_error_from_guest_memory_becomes_queue_error(
    mem: FakeGuestRam, driver: FakeDriver
) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    mem.size = 0  # RAM vanishes behind the queue's back

    with pytest.raises(QueueError):
        q.pop()


def test_memory_access_error_in_read_all_becomes_queue_error(mem: FakeGuestRam, driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    chain = popped(q)
    mem.size = 0

    with pytest.raises(QueueError):
        chain.read_all(mem, 1)


# --- activation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ring", "addr"),
    [("desc_addr", 0x1008), ("avail_addr", 0x2001), ("used_addr", 0x3002)],
)
def test_misaligned_ring_raises_queue_error(driver: FakeDriver, ring: str, addr: int) -> None:
    q = SplitQueue(driver.mem)
    driver.program(q)
    setattr(q, ring, addr)

    with pytest.raises(QueueError, match="aligned"):
        q.activate(ALL_FEATURES)


@pytest.mark.parametrize("size", [0, 3, 12, 512, 65536])
def test_queue_size_not_a_power_of_two_up_to_max_raises_queue_error(driver: FakeDriver, size: int) -> None:
    q = SplitQueue(driver.mem, max_size=256)
    driver.program(q)
    q.size = size

    with pytest.raises(QueueError, match="power of two"):
        q.activate(ALL_FEATURES)


@pytest.mark.parametrize(
    ("ring", "addr"),
    [
        ("desc_addr", RAM_SIZE - 112),
        ("avail_addr", RAM_SIZE - 20),
        ("used_addr", RAM_SIZE - 68),
        ("used_addr", 2**64),
    ],
    ids=["descriptors", "avail", "used", "beyond-64-bit"],
)
def test_ring_beyond_ram_raises_queue_error(driver: FakeDriver, ring: str, addr: int) -> None:
    q = SplitQueue(driver.mem)
    driver.program(q)
    setattr(q, ring, addr)

    with pytest.raises(QueueError):
        q.activate(ALL_FEATURES)


def test_avail_ring_without_room_for_used_event_is_accepted_without_event_idx(driver: FakeDriver) -> None:
    q = SplitQueue(driver.mem)
    driver.program(q)
    q.avail_addr = RAM_SIZE - (4 + 2 * 8)

    q.activate(NO_EVENT_IDX)

    assert q.active


def test_failed_activation_leaves_the_queue_inactive(driver: FakeDriver) -> None:
    q = SplitQueue(driver.mem)
    driver.program(q)
    q.used_addr = 0x3002
    driver.add_chain(readable=[b"x"])

    with pytest.raises(QueueError):
        q.activate(ALL_FEATURES)
    assert (q.active, q.pop()) == (False, None)


def test_reset_returns_to_the_reset_state(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0)

    q.reset()

    assert q.state() == SplitQueue(driver.mem).state()


def test_max_size_not_a_power_of_two_is_a_programming_error(mem: FakeGuestRam) -> None:
    with pytest.raises(ValueError):
        SplitQueue(mem, max_size=100)


# --- notifications ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "new", "old", "expected"),
    [
        (0, 1, 0, True),
        (0, 2, 1, False),
        (5, 6, 3, True),
        (5, 5, 3, False),
        (2, 5, 3, False),
        (3, 3, 3, False),
        (0xFFFF, 1, 0xFFFE, True),
        (0, 1, 0xFFFE, True),
        (0xFFFD, 1, 0xFFFE, False),
    ],
)
def test_need_event_is_true_exactly_when_the_index_passes_event(
    event: int, new: int, old: int, expected: bool
) -> None:
    assert need_event(event, new, old) is expected


def test_event_idx_first_used_buffer_always_notifies(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.set_used_event(100)
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0)

    assert q.should_notify()


def test_event_idx_notifies_only_when_used_idx_passes_used_event(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.set_used_event(4)
    for _ in range(6):
        driver.add_chain(readable=[b"x"])
    chains = [popped(q) for _ in range(6)]
    q.push_used(chains[0], 0)
    q.should_notify()  # first call: notifies and records used idx 1
    q.push_used(chains[1], 0)
    q.push_used(chains[2], 0)
    quiet = q.should_notify()  # used idx 1 -> 3 does not pass 4
    q.push_used(chains[3], 0)
    q.push_used(chains[4], 0)
    q.push_used(chains[5], 0)

    assert (quiet, q.should_notify()) == (False, True)  # used idx 3 -> 6 passes 4


def test_event_idx_ignores_the_no_interrupt_flag(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    driver.set_used_event(0)
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0)

    assert q.should_notify()


def test_no_interrupt_flag_suppresses_notification(driver: FakeDriver) -> None:
    q = driver.make_queue(features=NO_EVENT_IDX)
    driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0)

    assert not q.should_notify()


def test_without_no_interrupt_flag_notification_is_wanted(driver: FakeDriver) -> None:
    q = driver.make_queue(features=NO_EVENT_IDX)
    driver.add_chain(readable=[b"x"])
    q.push_used(popped(q), 0)

    assert q.should_notify()


def test_set_notification_sets_and_clears_no_notify(driver: FakeDriver) -> None:
    q = driver.make_queue(features=NO_EVENT_IDX)

    q.set_notification(False)
    disabled = driver.used_flags()
    q.set_notification(True)

    assert (disabled, driver.used_flags()) == (VIRTQ_USED_F_NO_NOTIFY, 0)


def test_pop_with_event_idx_asks_for_a_kick_past_what_was_consumed(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    driver.add_chain(readable=[b"y"])

    q.pop()
    q.pop()

    assert driver.avail_event() == 2


def test_disabled_notification_with_event_idx_stops_moving_avail_event(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(readable=[b"x"])
    driver.add_chain(readable=[b"y"])
    q.pop()
    q.set_notification(False)

    q.pop()

    assert driver.avail_event() == 1


def test_enabling_notification_with_event_idx_writes_avail_event(driver: FakeDriver) -> None:
    q = driver.make_queue()
    q.set_notification(False)
    driver.add_chain(readable=[b"x"])
    driver.add_chain(readable=[b"y"])
    q.pop()
    q.pop()

    q.set_notification(True)

    assert driver.avail_event() == 2


def test_enabling_notification_with_event_idx_leaves_used_flags_alone(driver: FakeDriver) -> None:
    q = driver.make_queue()

    q.set_notification(False)

    assert driver.used_flags() == 0


# --- state ----------------------------------------------------------------------------------------------


def test_state_round_trip_continues_where_the_queue_stopped(driver: FakeDriver) -> None:
    q = driver.make_queue()
    heads = [driver.add_chain(writable=[4]) for _ in range(3)]
    q.push_used(popped(q), 4)
    q.push_used(popped(q), 4)
    saved = json.loads(json.dumps(q.state()))

    restored = SplitQueue(driver.mem)
    restored.set_state(saved)
    chain = popped(restored)
    restored.push_used(chain, 2)

    assert restored.state() == saved | {"last_avail_idx": 3, "used_idx": 3}
    assert (chain.head, driver.used_idx(), driver.used_elem(2)) == (heads[2], 3, (heads[2], 2))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("size", "8"),
        ("size", -1),
        ("size", 16),
        ("desc_addr", 0x1008),
        ("avail_addr", -2),
        ("used_addr", 2**64),
        ("last_avail_idx", 0x10000),
        ("used_idx", 1.0),
        ("ready", 1),
        ("active", None),
        ("event_idx", "yes"),
        ("signalled_used", 0x10000),
        ("notify", 0),
        ("used_idx", True),
    ],
)
def test_set_state_refuses_bad_values(driver: FakeDriver, key: str, value: object) -> None:
    q = driver.make_queue()
    good = q.state()
    target = SplitQueue(driver.mem, max_size=8)

    with pytest.raises(QueueError):
        target.set_state(good | {key: value})


def test_set_state_refuses_a_missing_field(driver: FakeDriver) -> None:
    q = driver.make_queue()
    state = q.state()
    del state["used_idx"]

    with pytest.raises(QueueError):
        q.set_state(state)


def test_set_state_refuses_a_non_dict(driver: FakeDriver) -> None:
    q = driver.make_queue()

    with pytest.raises(PyhvError):
        q.set_state([1, 2, 3])  # type: ignore[arg-type]


def test_refused_set_state_changes_nothing(driver: FakeDriver) -> None:
    q = driver.make_queue()
    driver.add_chain(writable=[4])
    q.push_used(popped(q), 4)
    before = q.state()

    with pytest.raises(QueueError):
        q.set_state(before | {"used_idx": 7, "used_addr": 0x3001})
    assert q.state() == before


# --- real guest memory ---------------------------------------------------------------------------------


@pytest.fixture
def guest_memory() -> Iterator[GuestMemory]:
    m = GuestMemory(16 * MiB)
    yield m
    m.close()


def test_queue_serves_a_request_in_real_guest_memory(guest_memory: GuestMemory) -> None:
    driver = FakeDriver(
        guest_memory, size=16, desc_addr=0x10000, avail_addr=0x11000, used_addr=0x12000, data_addr=0x20000
    )
    q = driver.make_queue()
    head = driver.add_indirect(readable=[b"ping"], writable=[4])

    chain = popped(q)
    request = chain.read_all(guest_memory, 64)
    chain.write_at(guest_memory, 0, b"pong")
    q.push_used(chain, 4)

    assert (request, guest_memory.read(chain.writable[0].addr, 4)) == (b"ping", b"pong")
    assert (driver.used_idx(), driver.used_elem(0), q.should_notify()) == (1, (head, 4), True)


def test_buffer_records_address_length_and_direction() -> None:
    assert Buffer(0x1000, 16, True) == (0x1000, 16, True)


# --- fuzzing ---------------------------------------------------------------------------------------------

FUZZ_RAM = 0x4000
FUZZ_TABLES = 0x3000  # where fuzzed indirect tables live
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def drive(q: SplitQueue, mem: FakeGuestRam, features: int, guest_writes: list[tuple[int, bytes]]) -> None:
    """Act as a device on whatever the rings hold, while the guest scribbles on memory."""
    q.activate(features)
    for step in range(100):
        offset, data = guest_writes[step % len(guest_writes)] if guest_writes else (0, b"")
        mem.scribble(offset, data)
        q.set_notification(step % 3 != 0)
        if not q.has_available():
            return
        chain = q.pop()
        if chain is None:
            return
        chain.read_all(mem, 4096)
        written = chain.write_at(mem, step % 7, b"\xa5" * min(chain.writable_len(), 4096))
        q.push_used(chain, written)
        q.should_notify()


def run_hostile(
    size: int,
    rings: tuple[int, int, int],
    features: int,
    mem: FakeGuestRam,
    guest_writes: list[tuple[int, bytes]],
) -> None:
    q = SplitQueue(mem, max_size=32)
    q.size = size
    q.desc_addr, q.avail_addr, q.used_addr = rings
    q.ready = True
    with contextlib.suppress(QueueError):
        drive(q, mem, features, guest_writes)


# mostly valid sizes, so that most examples get past activate()
sizes = st.sampled_from([1, 2, 4, 8, 16, 32] * 3 + [0, 3, 6, 12, 33, 64])


@st.composite
def sizes_and_avail_idx(draw: st.DrawFn) -> tuple[int, int]:
    """A queue size and an avail.idx, mostly no more than a queue's worth ahead of 0."""
    size = draw(sizes)
    wild = draw(st.integers(0, 3)) == 0
    return size, draw(st.integers(0, 0xFFFF) if wild else st.integers(0, max(size, 1)))


aligned_rings = st.tuples(
    st.integers(0, FUZZ_RAM // 16).map(lambda i: 16 * i),
    st.integers(0, FUZZ_RAM // 2).map(lambda i: 2 * i),
    st.integers(0, FUZZ_RAM // 4).map(lambda i: 4 * i),
)
any_rings = st.tuples(
    st.integers(0, FUZZ_RAM + 64), st.integers(0, FUZZ_RAM + 64), st.integers(0, FUZZ_RAM + 64)
)
feature_words = st.sampled_from(
    [BASIC_FEATURES, NO_EVENT_IDX, ALL_FEATURES, BASIC_FEATURES | 1 << VIRTIO_F_EVENT_IDX]
)
guest_writes = st.lists(
    st.tuples(st.integers(0, FUZZ_RAM - 1), st.binary(min_size=1, max_size=32)), max_size=8
)


@FUZZ_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=sizes_and_avail_idx(),
    rings=aligned_rings | any_rings,
    features=feature_words,
    writes=guest_writes,
)
def test_fuzz_random_ring_bytes_raise_nothing_but_queue_error(
    seed: int,
    shape: tuple[int, int],
    rings: tuple[int, int, int],
    features: int,
    writes: list[tuple[int, bytes]],
) -> None:
    size, avail_idx = shape
    mem = FakeGuestRam(FUZZ_RAM)
    mem.scribble(0, random.Random(seed).randbytes(FUZZ_RAM))
    mem.scribble(rings[1] + 2, avail_idx.to_bytes(2, "little"))

    run_hostile(size, rings, features, mem, writes)

    assert mem.violations == 0


# The structured fuzz lays out rings that are mostly plausible -- small buffers
# in RAM, heads and next fields below the size, pointers to short indirect
# tables -- so that chains get long, loop and nest; the rest is wild values.
FUZZ_BUFFERS = 0x2400  # where plausible buffers lie (clear of the rings and the tables)


@st.composite
def mostly(draw: st.DrawFn, usual: st.SearchStrategy[int], rare: st.SearchStrategy[int]) -> int:
    """A value from ``usual`` three times in four, else from ``rare``."""
    return draw(rare if draw(st.sampled_from([False, False, False, True])) else usual)


@st.composite
def descriptors(draw: st.DrawFn, entries: int) -> bytes:
    """One raw descriptor for a table of ``entries`` entries."""
    kind = draw(st.sampled_from(["buffer"] * 6 + ["indirect"] * 2 + ["wild"] * 2))
    next_ = draw(mostly(st.integers(0, max(entries - 1, 0)), st.integers(0, 0xFFFF)))
    if kind == "buffer":
        flags = draw(
            st.sampled_from(
                [0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE]
            )
        )
        return desc_entry(
            draw(st.integers(FUZZ_BUFFERS, FUZZ_TABLES - 64)), draw(st.integers(1, 64)), flags, next_
        )
    if kind == "indirect":
        # mostly a table in the fuzzed area; sometimes one running past the end of RAM
        addr = draw(mostly(st.integers(0, 15).map(lambda k: FUZZ_TABLES + 16 * k), st.integers(0, FUZZ_RAM)))
        flags = draw(
            mostly(st.just(VIRTQ_DESC_F_INDIRECT), st.just(VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT))
        )
        return desc_entry(addr, 16 * draw(st.integers(1, 8)), flags, next_)
    return desc_entry(
        draw(st.integers(0, FUZZ_RAM) | st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 64) | st.integers(0, 64).map(lambda n: 16 * n) | st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 7) | st.integers(0, 0xFFFF)),
        next_,
    )


class HostileLayout(NamedTuple):
    size: int
    avail_idx: int
    ring: bytes  # the available ring's entries
    table: bytes  # the descriptor table
    indirect: bytes  # the area indirect descriptors point into


@st.composite
def hostile_layouts(draw: st.DrawFn) -> HostileLayout:
    # sizes are valid here (test_fuzz_random_ring_bytes covers the others) so that
    # the examples spend their time walking chains
    size = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    avail_idx = draw(mostly(st.integers(1, size), st.integers(0, 0xFFFF)))
    entries = size
    heads = st.lists(
        mostly(st.integers(0, max(entries - 1, 0)), st.integers(0, 0xFFFF)),
        min_size=entries,
        max_size=entries,
    )
    return HostileLayout(
        size,
        avail_idx,
        b"".join(h.to_bytes(2, "little") for h in draw(heads)),
        b"".join(draw(st.lists(descriptors(entries), min_size=entries, max_size=entries))),
        b"".join(draw(st.lists(descriptors(8), min_size=16, max_size=16))),
    )


@FUZZ_SETTINGS
@given(
    layout=hostile_layouts(),
    features=mostly(st.sampled_from([ALL_FEATURES, NO_EVENT_IDX]), feature_words),
    writes=guest_writes,
)
def test_fuzz_hostile_descriptor_chains_raise_nothing_but_queue_error(
    layout: HostileLayout, features: int, writes: list[tuple[int, bytes]]
) -> None:
    mem = FakeGuestRam(FUZZ_RAM)
    mem.scribble(0, layout.table)
    mem.scribble(0x1000, b"\0\0" + layout.avail_idx.to_bytes(2, "little") + layout.ring)
    mem.scribble(FUZZ_TABLES, layout.indirect)

    run_hostile(layout.size, (0, 0x1000, 0x2000), features, mem, writes)

    assert mem.violations == 0


def test_unpop_returns_the_same_chain_again(driver: FakeDriver) -> None:
    q = driver.make_queue()
    head = driver.add_chain(writable=[64])
    first = popped(q)
    q.unpop()
    again = popped(q)
    assert (first.head, again.head, q.pop()) == (head, head, None)
