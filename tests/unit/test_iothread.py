import os
import threading

from pyhv.vmm.iothread import IoThread


def test_signalled_eventfd_runs_its_callback_on_the_io_thread() -> None:
    io, fd, seen = IoThread(), os.eventfd(0, os.EFD_NONBLOCK), threading.Event()
    names: list[str] = []
    io.add_eventfd(fd, lambda: (names.append(threading.current_thread().name), seen.set()))
    io.start()
    os.eventfd_write(fd, 1)
    assert seen.wait(2) and names == ["io"]
    io.close()
    os.close(fd)


def test_call_soon_runs_functions_in_order() -> None:
    io, done, order = IoThread(), threading.Event(), []
    io.start()
    io.call_soon(lambda: order.append(1))
    io.call_soon(lambda: (order.append(2), done.set()))
    assert done.wait(2) and order == [1, 2]
    io.close()


def test_a_raising_callback_does_not_stop_the_loop() -> None:
    io, done = IoThread(), threading.Event()
    io.start()
    io.call_soon(lambda: 1 / 0)
    io.call_soon(done.set)
    assert done.wait(2)
    io.close()


def test_removed_eventfd_no_longer_calls_back() -> None:
    io, fd, calls = IoThread(), os.eventfd(0, os.EFD_NONBLOCK), []
    io.add_eventfd(fd, lambda: calls.append(1))
    io.remove(fd)
    io.start()
    os.eventfd_write(fd, 1)
    done = threading.Event()
    io.call_soon(done.set)
    assert done.wait(2) and calls == []
    io.close()
    os.close(fd)


def test_call_later_runs_after_its_delay_in_deadline_order() -> None:
    import time

    io, done, order = IoThread(), threading.Event(), []
    io.start()
    start = time.monotonic()
    io.call_later(0.2, lambda: (order.append(("late", time.monotonic() - start)), done.set()))
    io.call_later(0.05, lambda: order.append(("early", time.monotonic() - start)))
    assert done.wait(2)
    io.close()
    assert ([name for name, _ in order], order[0][1] >= 0.05, order[1][1] >= 0.2) == (["early", "late"], True, True)
