"""The MC146818 CMOS real-time clock at ports 0x70 (index) / 0x71 (data).

The clock reads the host's wall-clock time (UTC) plus an offset: when the
guest sets the time, pyhv keeps the difference instead of touching the host
clock.  Values are BCD or binary and 12/24-hour per status register B, as the
guest chose.  The machine's facts are where QEMU's pc_cmos_init puts them,
which firmware (SeaBIOS) and some firmware-less guests read: base memory in
KiB (0x15/0x16, 640), memory from 1 MiB in KiB (0x17/0x18 and 0x30/0x31, at
most 65535), memory above 16 MiB (0x34/0x35) and above 4 GiB (0x5B-0x5D) in
64 KiB units, and the number of CPUs less one (0x5F).  No alarm or periodic
interrupts.

CMOS RAM is battery-backed on a PC: a reset or a power cycle keeps what the
guest wrote there and the time it set.  pyhv resets a guest by building the
machine again (vmm/runtime.py), so the runtime carries :meth:`Rtc.nvram` of the
machine that stopped into the next one's constructor.  That is how the
shutdown status byte (register 0x0F, which a BIOS reads at the reset vector
to tell a cold boot from a "resume at the far pointer in 40:67" warm reset)
survives a reset: a guest reads back what it wrote.  Acting on it is the
firmware's job: under ``--firmware`` the runtime keeps the RAM over a reset
too, so SeaBIOS resumes as the byte says (0x05, 0x0A-0x0C: through 40:67);
booting a kernel directly, pyhv is the firmware and always boots it afresh on
new RAM.  (QEMU's RTC clears the byte on a reset unless it holds 0xFE, QEMU's
S3-resume mark; pyhv keeps it, as a PC's CMOS does.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..bus import BytePort

INDEX_PORT = 0x70
DATA_PORT = 0x71
RTC_IRQ = 8

SECONDS, MINUTES, HOURS = 0x00, 0x02, 0x04
WEEKDAY, DAY, MONTH, YEAR = 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
MEM_ABOVE_16M_LO, MEM_ABOVE_16M_HI = 0x34, 0x35
MEM_ABOVE_4G_LO, MEM_ABOVE_4G_MID, MEM_ABOVE_4G_HI = 0x5B, 0x5C, 0x5D
BASE_MEM_LO, BASE_MEM_HI = 0x15, 0x16
EXT_MEM_LO, EXT_MEM_HI = 0x17, 0x18
EXT_MEM2_LO, EXT_MEM2_HI = 0x30, 0x31
SMP_COUNT = 0x5F
BASE_MEM_KIB = 640
SHUTDOWN_STATUS = 0x0F  # the BIOS's reset reason: 0 cold boot, 0x05/0x0A-0x0C resume through 40:67

STATUS_A_DIVIDER_32K = 0x26  # 32.768 kHz time base, 1024 Hz rate
STATUS_B_24H_BIT = 0x02
STATUS_B_BINARY_BIT = 0x04
STATUS_B_SET_BIT = 0x80
STATUS_D_VALID_RAM_BIT = 0x80
HOUR_PM_BIT = 0x80
INDEX_MASK = 0x7F  # bit 7 of the index port is the NMI mask

_TIME_REGS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _from_bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


class Rtc:
    """``nvram``: what :meth:`nvram` returned on the machine this one replaces after a
    reset (the guest's CMOS bytes and clock offset survive, as on a PC)."""

    def __init__(
        self, mem_below_4g: int = 0, mem_above_4g: int = 0, clock: Callable[[], float] = time.time,
        nvram: tuple[float, bytes] | None = None, cpus: int = 1,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.index = 0
        self.offset = 0.0  # guest time minus host time, seconds
        self.cmos = bytearray(128)
        self.cmos[STATUS_A] = STATUS_A_DIVIDER_32K
        self.cmos[STATUS_B] = STATUS_B_24H_BIT
        if nvram is not None:
            self.offset = nvram[0]
            self.cmos[:] = nvram[1]
        self.cmos[STATUS_C] = 0  # pyhv sets these and the memory sizes at every build
        self.cmos[STATUS_D] = STATUS_D_VALID_RAM_BIT
        for lo, value in ((BASE_MEM_LO, BASE_MEM_KIB), (EXT_MEM_LO, min(0xFFFF, max(0, mem_below_4g // 1024 - 1024))),
                          (EXT_MEM2_LO, min(0xFFFF, max(0, mem_below_4g // 1024 - 1024)))):
            self.cmos[lo], self.cmos[lo + 1] = value & 0xFF, value >> 8
        self.cmos[SMP_COUNT] = max(0, cpus - 1) & 0xFF
        above_16m = max(0, min(mem_below_4g, 0xFFFF << 16) - (16 << 20)) >> 16
        self.cmos[MEM_ABOVE_16M_LO] = above_16m & 0xFF
        self.cmos[MEM_ABOVE_16M_HI] = (above_16m >> 8) & 0xFF
        above_4g = mem_above_4g >> 16
        self.cmos[MEM_ABOVE_4G_LO] = above_4g & 0xFF
        self.cmos[MEM_ABOVE_4G_MID] = (above_4g >> 8) & 0xFF
        self.cmos[MEM_ABOVE_4G_HI] = (above_4g >> 16) & 0xFF
        self._pending: dict[int, int] = {}  # time registers written while SET
        self.index_port = BytePort(self._read_index, self._write_index)
        self.data_port = BytePort(self._read_data, self._write_data)

    def _read_index(self) -> int:
        return self.index

    def _write_index(self, value: int) -> None:
        self.index = value & INDEX_MASK

    def _encode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & STATUS_B_BINARY_BIT else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & STATUS_B_BINARY_BIT else _from_bcd(value)

    def _now(self) -> time.struct_time:
        return time.gmtime(self._clock() + self.offset)

    def _read_data(self) -> int:
        with self._lock:
            i = self.index
            if i in _TIME_REGS:
                t = self._now()
                if i == HOURS:
                    return self._hours(t.tm_hour)
                value = {
                    SECONDS: t.tm_sec, MINUTES: t.tm_min, WEEKDAY: (t.tm_wday + 1) % 7 + 1,
                    DAY: t.tm_mday, MONTH: t.tm_mon, YEAR: t.tm_year % 100, CENTURY: t.tm_year // 100,
                }[i]
                return self._encode(value)
            if i == STATUS_C:
                return 0
            return self.cmos[i]

    def _hours(self, hour: int) -> int:
        if self.cmos[STATUS_B] & STATUS_B_24H_BIT:
            return self._encode(hour)
        h12 = hour % 12 or 12
        return self._encode(h12) | (HOUR_PM_BIT if hour >= 12 else 0)

    def _write_data(self, value: int) -> None:
        with self._lock:
            i = self.index
            if i in _TIME_REGS:
                self._pending[i] = value
                if not self.cmos[STATUS_B] & STATUS_B_SET_BIT:
                    self._apply_time()
            elif i == STATUS_B:
                was_set = self.cmos[STATUS_B] & STATUS_B_SET_BIT
                self.cmos[STATUS_B] = value
                if was_set and not value & STATUS_B_SET_BIT:
                    self._apply_time()
            elif i not in (STATUS_C, STATUS_D):
                self.cmos[i] = value

    def _apply_time(self) -> None:
        """Turn the time registers the guest wrote into a new offset."""
        t = self._now()
        cur = {SECONDS: t.tm_sec, MINUTES: t.tm_min, HOURS: t.tm_hour, DAY: t.tm_mday, MONTH: t.tm_mon,
               YEAR: t.tm_year % 100, CENTURY: t.tm_year // 100}
        for reg, raw in self._pending.items():
            if reg == HOURS:
                pm = bool(raw & HOUR_PM_BIT) and not self.cmos[STATUS_B] & STATUS_B_24H_BIT
                hour = self._decode(raw & ~HOUR_PM_BIT & 0xFF)
                cur[HOURS] = (hour % 12) + (12 if pm else 0) if not self.cmos[STATUS_B] & STATUS_B_24H_BIT else hour
            elif reg in cur:
                cur[reg] = self._decode(raw)
        self._pending.clear()
        import calendar  # rare (the guest sets the clock): keep it off start-up

        try:
            guest = calendar.timegm((cur[CENTURY] * 100 + cur[YEAR], cur[MONTH], cur[DAY], cur[HOURS],
                                     cur[MINUTES], cur[SECONDS], 0, 0, 0))
        except (ValueError, OverflowError):
            return  # nonsense date from the guest: keep the old time
        self.offset = guest - int(self._clock())

    def nvram(self) -> tuple[float, bytes]:
        """The battery-backed part, for the machine built after a reset: the clock
        offset and the CMOS bytes (those pyhv sets are set again by the next machine)."""
        with self._lock:
            return self.offset, bytes(self.cmos)

    # --- state -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain values: the index register, the guest's offset from host time, CMOS RAM."""
        with self._lock:
            return {"index": self.index, "offset": self.offset, "cmos": self.cmos.hex(),
                    "pending": sorted([k, v] for k, v in self._pending.items())}

    def set_state(self, state: Any) -> None:
        """Take back what :meth:`state` returned; every value is checked first."""
        from ..state import DeviceStateError, bytes_field, check_keys, float_field, int_field

        check_keys(state, ("index", "offset", "cmos", "pending"), "rtc")
        index = int_field(state, "index", INDEX_MASK, "rtc")
        offset = float_field(state, "offset", 1e11, "rtc")  # about 3000 years either way
        cmos = bytes_field(state, "cmos", 128, "rtc")
        pending = state["pending"]
        if not isinstance(pending, list) or not all(
            isinstance(p, list) and len(p) == 2 and p[0] in _TIME_REGS and isinstance(p[1], int)
            and not isinstance(p[1], bool) and 0 <= p[1] <= 0xFF for p in pending
        ):
            raise DeviceStateError("rtc state: pending must be [time register, byte] pairs")
        with self._lock:
            self.index, self.offset, self.cmos = index, offset, bytearray(cmos)
            self._pending = dict(pending)
