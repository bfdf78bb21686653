import pytest

from pyhv.devices.legacy import uart as u
from pyhv.devices.legacy.debug_exit import DebugExit
from pyhv.devices.legacy.i8042 import I8042
from pyhv.devices.legacy.port80 import ProgressCodes
from pyhv.errors import PyhvError


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.levels.append(level)


@pytest.fixture
def out() -> bytearray:
    return bytearray()


@pytest.fixture
def irq() -> Line:
    return Line()


@pytest.fixture
def uart(out: bytearray, irq: Line) -> u.Uart:
    return u.Uart(out.extend, irq)


def test_thr_write_reaches_the_output(uart: u.Uart, out: bytearray) -> None:
    for ch in b"ok\n":
        uart.write(u.THR, 1, ch)
    assert bytes(out) == b"ok\n"


def test_lsr_reports_transmitter_empty(uart: u.Uart) -> None:
    assert uart.read(u.LSR, 1) & (u.LSR_EMPTY_THR_BIT | u.LSR_IDLE_BIT) == 0x60


def test_dlab_redirects_offsets_zero_and_one_to_the_divisor(uart: u.Uart, out: bytearray) -> None:
    uart.write(u.LCR, 1, u.LCR_DLAB_BIT | 3)
    uart.write(u.DLL, 1, 1)
    uart.write(u.DLM, 1, 0)
    uart.write(u.LCR, 1, 3)
    assert (uart.dll, uart.dlm, bytes(out)) == (1, 0, b"")


def test_received_byte_sets_data_ready_and_raises_irq(uart: u.Uart, irq: Line) -> None:
    uart.write(u.IER, 1, u.IER_RDA_BIT)
    uart.enqueue(b"x")
    assert uart.read(u.LSR, 1) & u.LSR_DATA_READY_BIT and uart.read(u.IIR, 1) == u.IIR_RDA
    assert irq.levels == [True]


def test_reading_rbr_drains_and_drops_irq(uart: u.Uart, irq: Line) -> None:
    uart.write(u.IER, 1, u.IER_RDA_BIT)
    uart.enqueue(b"x")
    assert uart.read(u.RBR, 1) == ord("x")
    assert irq.levels == [True, False]


def test_enabling_thre_interrupt_raises_it_and_iir_read_clears_it(uart: u.Uart, irq: Line) -> None:
    uart.write(u.IER, 1, u.IER_THRE_BIT)
    assert uart.read(u.IIR, 1) == u.IIR_THRE
    assert uart.read(u.IIR, 1) == u.IIR_NO_INT_BIT and irq.levels == [True, False]


def test_loopback_sends_thr_to_rbr(uart: u.Uart, out: bytearray) -> None:
    uart.write(u.MCR, 1, u.MCR_LOOP_BIT)
    uart.write(u.THR, 1, 0x5A)
    assert uart.read(u.RBR, 1) == 0x5A and bytes(out) == b""


def test_receive_fifo_takes_at_most_its_size(uart: u.Uart) -> None:
    assert uart.enqueue(bytes(100)) == u.RX_FIFO_SIZE


def test_state_round_trip_restores_registers(uart: u.Uart, out: bytearray) -> None:
    uart.write(u.SCR, 1, 0x77)
    uart.enqueue(b"ab")
    other = u.Uart(out.extend)
    other.set_state(uart.state())
    assert other.state() == uart.state()


def test_state_with_bad_value_is_refused(uart: u.Uart) -> None:
    bad = uart.state() | {"lcr": 300}
    with pytest.raises(PyhvError, match="lcr"):
        uart.set_state(bad)


def test_i8042_pulse_reset_command_resets() -> None:
    resets: list[int] = []
    kbc = I8042(lambda: resets.append(1))
    kbc.command.write(0, 1, 0xFE)
    assert resets == [1]


def test_i8042_self_test_answers_0x55() -> None:
    kbc = I8042(lambda: None)
    kbc.command.write(0, 1, 0xAA)
    assert kbc.command.read(0, 1) & 1 and kbc.data.read(0, 1) == 0x55


def test_i8042_output_port_write_clearing_bit0_resets() -> None:
    resets: list[int] = []
    kbc = I8042(lambda: resets.append(1))
    kbc.command.write(0, 1, 0xD1)
    kbc.data.write(0, 1, 0xFE)
    assert resets == [1]


def test_debug_exit_passes_the_written_value() -> None:
    values: list[int] = []
    DebugExit(values.append).write(0, 4, 0x31)
    assert values == [0x31]


def test_port80_records_codes_in_order() -> None:
    p = ProgressCodes()
    p.write(0, 1, 0x10)
    p.write(0, 1, 0x1FF)
    assert [c for _, c in p.records] == [0x10, 0xFF] and p.read(0, 1) == 0xFF


def test_console_to_a_full_pipe_gives_up_once_the_machine_stops() -> None:
    import os
    import threading

    from pyhv.backends.console import FdConsole

    r, w = os.pipe()
    os.set_blocking(w, True)
    console = FdConsole(w, owned=True)
    done = threading.Event()

    def writer() -> None:
        console.write(b"x" * (1 << 20))  # far more than a pipe holds
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    blocked = not done.wait(0.3)
    console.set_stopping(True)
    assert blocked and done.wait(2)
    console.close()
    os.close(r)


def _keyboard(config: int) -> tuple[I8042, list[int]]:
    edges: list[int] = []
    kbc = I8042(lambda: None, irq=edges.append)
    kbc.command.write(0, 1, 0x60)
    kbc.data.write(0, 1, config)
    return kbc, edges


def _drain(kbc: I8042) -> list[int]:
    out = []
    while kbc.command.read(0, 1) & 1:
        out.append(kbc.data.read(0, 1))
    return out


def test_i8042_ctrl_alt_del_queues_set2_make_and_break_codes_with_irq1_edges() -> None:
    kbc, edges = _keyboard(0x01)
    queued = kbc.ctrl_alt_del()
    codes = _drain(kbc)
    assert (queued, codes) == (11, [0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14])
    assert edges == [1, 0] * 11  # one edge when queued, one after each read that leaves more


def test_i8042_ctrl_alt_del_with_translation_queues_set1_codes() -> None:
    kbc, _ = _keyboard(0x41)
    kbc.ctrl_alt_del()
    assert _drain(kbc) == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]


def test_i8042_keyboard_interrupt_disabled_queues_without_irq() -> None:
    kbc, edges = _keyboard(0x00)
    kbc.ctrl_alt_del()
    assert (len(_drain(kbc)), edges) == (11, [])


def test_i8042_full_buffer_refuses_a_second_ctrl_alt_del() -> None:
    kbc, _ = _keyboard(0x01)
    kbc.ctrl_alt_del()
    with pytest.raises(PyhvError, match="output buffer is full"):
        kbc.ctrl_alt_del()
    assert len(_drain(kbc)) == 11


def test_i8042_keyboard_command_is_acknowledged() -> None:
    kbc, edges = _keyboard(0x01)
    kbc.data.write(0, 1, 0xF2)
    assert (_drain(kbc), edges) == ([0xFA], [1, 0])


def test_i8042_old_state_with_one_output_byte_is_taken() -> None:
    kbc = I8042(lambda: None)
    kbc.set_state({"config": 1, "status": 4, "output": 0x55, "pending": None})
    assert (_drain(kbc), kbc.state()["output"]) == ([0x55], [])
