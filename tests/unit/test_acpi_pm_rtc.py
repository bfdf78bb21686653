import calendar

import pytest

from pyhv.boot.acpi import RESET_VALUE, S5_SLP_TYP
from pyhv.devices.legacy import rtc
from pyhv.devices.legacy.acpi_pm import SLP_EN_BIT, AcpiPm


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def pm(events: list[str]) -> AcpiPm:
    return AcpiPm(poweroff=lambda: events.append("off"), reset=lambda: events.append("reset"))


def test_s5_with_slp_en_powers_off(pm: AcpiPm, events: list[str]) -> None:
    pm.sleep_control.write(0, 1, (S5_SLP_TYP << 2) | SLP_EN_BIT)
    assert events == ["off"]


def test_s5_without_slp_en_does_nothing(pm: AcpiPm, events: list[str]) -> None:
    pm.sleep_control.write(0, 1, S5_SLP_TYP << 2)
    assert events == []


def test_other_sleep_type_does_nothing(pm: AcpiPm, events: list[str]) -> None:
    pm.sleep_control.write(0, 1, (3 << 2) | SLP_EN_BIT)
    assert events == []


def test_reset_register_resets(pm: AcpiPm, events: list[str]) -> None:
    pm.reset.write(0, 1, RESET_VALUE)
    assert events == ["reset"]


FIXED = calendar.timegm((2026, 11, 25, 17, 4, 9, 0, 0, 0))


def _read(clock: rtc.Rtc, reg: int) -> int:
    clock.index_port.write(0, 1, reg)
    return clock.data_port.read(0, 1)


def _write(clock: rtc.Rtc, reg: int, value: int) -> None:
    clock.index_port.write(0, 1, reg)
    clock.data_port.write(0, 1, value)


def test_rtc_reports_host_time_in_bcd() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    regs = [_read(clock, r) for r in (rtc.YEAR, rtc.MONTH, rtc.DAY, rtc.HOURS, rtc.MINUTES, rtc.SECONDS, rtc.CENTURY)]
    assert regs == [0x26, 0x11, 0x25, 0x17, 0x04, 0x09, 0x20]


def test_rtc_binary_mode_reports_plain_numbers() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    _write(clock, rtc.STATUS_B, rtc.STATUS_B_24H_BIT | rtc.STATUS_B_BINARY_BIT)
    assert (_read(clock, rtc.HOURS), _read(clock, rtc.MINUTES)) == (17, 4)


def test_rtc_12_hour_mode_sets_pm_bit() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    _write(clock, rtc.STATUS_B, 0)
    assert _read(clock, rtc.HOURS) == rtc.HOUR_PM_BIT | 0x05


def test_guest_setting_the_time_changes_only_its_offset() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    _write(clock, rtc.STATUS_B, rtc.STATUS_B_24H_BIT | rtc.STATUS_B_SET_BIT)
    _write(clock, rtc.YEAR, 0x30)
    _write(clock, rtc.STATUS_B, rtc.STATUS_B_24H_BIT)
    assert _read(clock, rtc.YEAR) == 0x30 and _read(clock, rtc.MINUTES) == 0x04


def test_nonsense_date_from_guest_keeps_old_time() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    _write(clock, rtc.MONTH, 0x99)
    assert _read(clock, rtc.MONTH) == 0x11


def test_status_d_reports_valid_ram() -> None:
    assert _read(rtc.Rtc(), rtc.STATUS_D) & rtc.STATUS_D_VALID_RAM_BIT


def test_index_port_masks_the_nmi_bit() -> None:
    clock = rtc.Rtc(clock=lambda: FIXED)
    assert _read(clock, 0x80 | rtc.SECONDS) == 0x09


def test_cmos_reports_memory_above_16m_in_64k_units() -> None:
    clock = rtc.Rtc(mem_below_4g=256 << 20)
    assert _read(clock, rtc.MEM_ABOVE_16M_LO) | (_read(clock, rtc.MEM_ABOVE_16M_HI) << 8) == (240 << 20) >> 16


def test_rtc_shutdown_status_byte_and_set_time_survive_a_rebuild_after_reset() -> None:
    old = rtc.Rtc(mem_below_4g=256 << 20, clock=lambda: FIXED)
    _write(old, rtc.SHUTDOWN_STATUS, 0x0A)
    _write(old, rtc.STATUS_B, rtc.STATUS_B_24H_BIT | rtc.STATUS_B_SET_BIT)
    _write(old, rtc.YEAR, 0x30)
    _write(old, rtc.STATUS_B, rtc.STATUS_B_24H_BIT)
    new = rtc.Rtc(mem_below_4g=512 << 20, clock=lambda: FIXED, nvram=old.nvram())
    assert (_read(new, rtc.SHUTDOWN_STATUS), _read(new, rtc.YEAR)) == (0x0A, 0x30)
    assert (_read(new, rtc.MEM_ABOVE_16M_LO), _read(new, rtc.MEM_ABOVE_16M_HI)) == (0x00, 0x1F)  # the new machine's: 496 MiB


def test_rtc_shutdown_status_byte_is_carried_by_save_and_restore() -> None:
    old = rtc.Rtc(clock=lambda: FIXED)
    _write(old, rtc.SHUTDOWN_STATUS, 0x05)
    new = rtc.Rtc(clock=lambda: FIXED)
    new.set_state(old.state())
    assert _read(new, rtc.SHUTDOWN_STATUS) == 0x05


def test_rtc_holds_the_memory_sizes_and_cpu_count_where_qemu_puts_them() -> None:
    clock = rtc.Rtc(mem_below_4g=256 << 20, mem_above_4g=1 << 30, cpus=4)
    words = {reg: _read(clock, reg) | _read(clock, reg + 1) << 8 for reg in (0x15, 0x17, 0x30, 0x34)}
    assert words == {0x15: 640, 0x17: 0xFFFF, 0x30: 0xFFFF, 0x34: (256 - 16) << 4}
    assert [_read(clock, reg) for reg in (0x5B, 0x5C, 0x5D, 0x5F)] == [0x00, 0x40, 0x00, 3]


def test_rtc_extended_memory_of_a_small_guest_is_its_kib_above_1mib() -> None:
    clock = rtc.Rtc(mem_below_4g=32 << 20)
    assert (_read(clock, 0x30) | _read(clock, 0x31) << 8, _read(clock, 0x5F)) == (31 * 1024, 0)
