"""Mirrors of <linux/kvm.h> (x86-64) with the kernel's names.

Each structure names its C counterpart in ``_c_name_``; tests/unit/test_sys_abi.py
compiles a program against the machine's header and compares every field's
offset and every structure's size with these mirrors.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8 as u8
from ctypes import c_uint16 as u16
from ctypes import c_uint32 as u32
from ctypes import c_uint64 as u64

from .ioctl import _IO, _IOR, _IOW, _IOWR

KVMIO = 0xAE
KVM_API_VERSION = 12


#: for code outside _sys that checks values against these structures
sizeof = ctypes.sizeof
U8, U32, U64 = u8, u32, u64


def int_range(t: type) -> tuple[int, int]:
    """The smallest and largest value a ctypes integer type holds."""
    bits = 8 * ctypes.sizeof(t)
    if t(-1).value < 0:  # type: ignore[call-arg, attr-defined]
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


class _Struct(ctypes.Structure):
    _c_name_ = ""


class _Union(ctypes.Union):
    _c_name_ = ""


class kvm_userspace_memory_region(_Struct):
    _c_name_ = "struct kvm_userspace_memory_region"
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_regs(_Struct):
    _c_name_ = "struct kvm_regs"
    _fields_ = [
        (name, u64)
        for name in (
            ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
        )
    ]


class kvm_segment(_Struct):
    _c_name_ = "struct kvm_segment"
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(_Struct):
    _c_name_ = "struct kvm_dtable"
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(_Struct):
    _c_name_ = "struct kvm_sregs"
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(_Struct):
    _c_name_ = "struct kvm_fpu"
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_msr_entry(_Struct):
    _c_name_ = "struct kvm_msr_entry"
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_Struct):
    """Header only; the entries follow (see :func:`msrs_buffer`)."""

    _c_name_ = "struct kvm_msrs"
    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_msr_list(_Struct):
    """Header only; the indices follow."""

    _c_name_ = "struct kvm_msr_list"
    _fields_ = [("nmsrs", u32)]


class kvm_cpuid_entry2(_Struct):
    _c_name_ = "struct kvm_cpuid_entry2"
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class kvm_cpuid2(_Struct):
    """Header only; the entries follow (see :func:`cpuid_buffer`)."""

    _c_name_ = "struct kvm_cpuid2"
    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid_buffer(nent: int) -> ctypes.Structure:
    """A ``struct kvm_cpuid2`` followed by room for ``nent`` entries."""

    class _cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    buf = _cpuid2_n()
    buf.nent = nent
    return buf


def msrs_buffer(indices: list[int]) -> ctypes.Structure:
    """A ``struct kvm_msrs`` followed by one entry per MSR index."""

    class _msrs_n(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * len(indices))]

    buf = _msrs_n()
    buf.nmsrs = len(indices)
    for i, index in enumerate(indices):
        buf.entries[i].index = index
    return buf


class kvm_irq_level(_Struct):
    _c_name_ = "struct kvm_irq_level"
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_pit_config(_Struct):
    _c_name_ = "struct kvm_pit_config"
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_mp_state(_Struct):
    _c_name_ = "struct kvm_mp_state"
    _fields_ = [("mp_state", u32)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4


class kvm_enable_cap(_Struct):
    _c_name_ = "struct kvm_enable_cap"
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


KVM_APIC_REG_SIZE = 0x400
KVM_MAX_XCRS = 16


class kvm_lapic_state(_Struct):
    _c_name_ = "struct kvm_lapic_state"
    _fields_ = [("regs", ctypes.c_char * KVM_APIC_REG_SIZE)]


class _ev_exception(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _ev_interrupt(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _ev_nmi(_Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _ev_smi(_Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _ev_triple_fault(_Struct):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(_Struct):
    _c_name_ = "struct kvm_vcpu_events"
    _fields_ = [
        ("exception", _ev_exception),
        ("interrupt", _ev_interrupt),
        ("nmi", _ev_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _ev_smi),
        ("triple_fault", _ev_triple_fault),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_debugregs(_Struct):
    _c_name_ = "struct kvm_debugregs"
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_guest_debug_arch(_Struct):
    _c_name_ = "struct kvm_guest_debug_arch"
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(_Struct):
    """KVM_SET_GUEST_DEBUG's argument: ``control`` (KVM_GUESTDBG_*) and DR0-DR7 for the host's debugger."""

    _c_name_ = "struct kvm_guest_debug"
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_debug_exit_arch(_Struct):
    """``kvm_run.debug.arch`` after KVM_EXIT_DEBUG: the vector (1 or 3), the linear pc, DR6, DR7."""

    _c_name_ = "struct kvm_debug_exit_arch"
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_xsave(_Struct):
    _c_name_ = "struct kvm_xsave"
    _fields_ = [("region", u32 * 1024)]


class kvm_xcr(_Struct):
    _c_name_ = "struct kvm_xcr"
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(_Struct):
    _c_name_ = "struct kvm_xcrs"
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


class kvm_irqfd(_Struct):
    _c_name_ = "struct kvm_irqfd"
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(_Struct):
    _c_name_ = "struct kvm_ioeventfd"
    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", ctypes.c_int32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0


class kvm_msi(_Struct):
    _c_name_ = "struct kvm_msi"
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32), ("pad", u8 * 12)]


class kvm_irq_routing_irqchip(_Struct):
    _c_name_ = "struct kvm_irq_routing_irqchip"
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(_Struct):
    _c_name_ = "struct kvm_irq_routing_msi"
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class kvm_irq_routing_entry_u(_Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(_Struct):
    _c_name_ = "struct kvm_irq_routing_entry"
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", kvm_irq_routing_entry_u)]


class kvm_irq_routing(_Struct):
    """The header; ``nr`` entries follow it (a flexible array in C)."""

    _c_name_ = "struct kvm_irq_routing"
    _fields_ = [("nr", u32), ("flags", u32)]



def irq_routing(entries: list[kvm_irq_routing_entry]) -> bytearray:
    """A whole ``struct kvm_irq_routing``: the header, then the entries."""
    table = bytearray(kvm_irq_routing(nr=len(entries)))
    for entry in entries:
        table += bytes(entry)
    return table

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_clock_data(_Struct):
    _c_name_ = "struct kvm_clock_data"
    _fields_ = [
        ("clock", u64),
        ("flags", u32),
        ("pad0", u32),
        ("realtime", u64),
        ("host_tsc", u64),
        ("pad", u32 * 4),
    ]


class kvm_irqchip(_Struct):
    """KVM_GET/SET_IRQCHIP: one of the in-kernel PIC pair or the IOAPIC; ``chip``
    holds struct kvm_pic_state or kvm_ioapic_state (a 512-byte union in C)."""

    _c_name_ = "struct kvm_irqchip"
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", u8 * 512)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_pit_channel_state(_Struct):
    _c_name_ = "struct kvm_pit_channel_state"
    _fields_ = [
        ("count", u32),
        ("latched_count", u16),
        ("count_latched", u8),
        ("status_latched", u8),
        ("status", u8),
        ("read_state", u8),
        ("write_state", u8),
        ("write_latch", u8),
        ("rw_mode", u8),
        ("mode", u8),
        ("bcd", u8),
        ("gate", u8),
        ("count_load_time", ctypes.c_int64),
    ]


class kvm_pit_state2(_Struct):
    _c_name_ = "struct kvm_pit_state2"
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


class kvm_dirty_log(_Struct):
    """KVM_GET_DIRTY_LOG: ``dirty_bitmap`` is the address of one bit per page of the slot
    (an anonymous union with a u64 in C)."""

    _c_name_ = "struct kvm_dirty_log"
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


# --- struct kvm_run and the parts of its exit union pyhv reads -----------------


class _run_hw(_Struct):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(_Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _run_io(_Struct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _run_debug(_Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _run_mmio(_Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_internal(_Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_system_event(_Struct):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_exit(_Union):
    _fields_ = [
        ("hw", _run_hw),
        ("fail_entry", _run_fail_entry),
        ("ex", _run_ex),
        ("io", _run_io),
        ("debug", _run_debug),
        ("mmio", _run_mmio),
        ("internal", _run_internal),
        ("system_event", _run_system_event),
        ("padding", ctypes.c_char * 256),
    ]


class kvm_run(_Struct):
    """The head of the shared ``kvm_run`` page (the sync-regs area that follows is not mirrored)."""

    _c_name_ = "struct kvm_run"
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("u", _run_exit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
    ]


#: fields of the exit union checked against the header, as ``member.field``
KVM_RUN_UNION_FIELDS = [
    (member, field)
    for member, struct in (
        ("hw", _run_hw),
        ("fail_entry", _run_fail_entry),
        ("ex", _run_ex),
        ("io", _run_io),
        ("debug", _run_debug),
        ("mmio", _run_mmio),
        ("internal", _run_internal),
        ("system_event", _run_system_event),
    )
    for field, *_ in struct._fields_
]

# Offsets the vCPU hot path reads with struct.unpack_from (checked by the ABI test).
KVM_RUN_OFF_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
KVM_RUN_OFF_EXIT_REASON = kvm_run.exit_reason.offset
KVM_RUN_OFF_EXIT = kvm_run.u.offset

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# --- capabilities ---------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT2 = 33
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_SET_GUEST_DEBUG2 = 195  # the KVM_GUESTDBG_* bits this host supports

# --- ioctls ---------------------------------------------------------------------
# system
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
# vm
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
# vcpu
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)

#: every ioctl number above, by the header's macro name (checked by the ABI test)
IOCTLS = {name: value for name, value in globals().items() if name.startswith("KVM_") and name in {
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID", "KVM_GET_MSR_INDEX_LIST", "KVM_CREATE_VCPU",
    "KVM_SET_USER_MEMORY_REGION", "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR",
    "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE", "KVM_CREATE_PIT2", "KVM_ENABLE_CAP", "KVM_RUN",
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_MSRS",
    "KVM_SET_MSRS", "KVM_GET_FPU", "KVM_SET_FPU", "KVM_SET_CPUID2", "KVM_GET_MP_STATE",
    "KVM_SET_MP_STATE", "KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_SET_GUEST_DEBUG", "KVM_GET_XSAVE", "KVM_SET_XSAVE",
    "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_IRQFD", "KVM_IOEVENTFD", "KVM_SET_CLOCK", "KVM_GET_CLOCK",
    "KVM_SIGNAL_MSI", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", "KVM_GET_PIT2", "KVM_SET_PIT2",
    "KVM_GET_DIRTY_LOG", "KVM_SET_GSI_ROUTING",
}}

#: the mirrored structures, for the ABI test
STRUCTS = [
    kvm_userspace_memory_region, kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_fpu,
    kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_cpuid_entry2, kvm_cpuid2, kvm_irq_level, kvm_pit_config,
    kvm_mp_state, kvm_enable_cap, kvm_lapic_state, kvm_vcpu_events, kvm_debugregs, kvm_guest_debug_arch,
    kvm_guest_debug, kvm_debug_exit_arch, kvm_xsave, kvm_xcr,
    kvm_xcrs, kvm_irqfd, kvm_ioeventfd, kvm_msi, kvm_clock_data, kvm_irqchip, kvm_pit_channel_state,
    kvm_pit_state2, kvm_dirty_log, kvm_run, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
    kvm_irq_routing_entry, kvm_irq_routing,
]

