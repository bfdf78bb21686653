"""The CPUID a vCPU reports: KVM's supported set, refined per vCPU.

Starting from KVM_GET_SUPPORTED_CPUID (what this host and KVM can give a
guest), pyhv fixes what only the VMM knows: the vCPU's APIC ID and the
topology (leaf 0x1 EBX, leaves 0xB and 0x1F, AMD's 0x80000008 core count), the
hypervisor bit, the KVM paravirtual signature leaf, and it hides nested
virtualization (VMX/SVM), which pyhv does not offer.  All values are plain ints
so the policy can be tested without /dev/kvm.
"""

from __future__ import annotations

from typing import NamedTuple

CPUID_FLAG_SIGNIFICANT_INDEX = 1

LEAF1_ECX_VMX = 1 << 5
LEAF1_ECX_X2APIC = 1 << 21
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28
EXT1_ECX_CMP_LEGACY = 1 << 1
EXT1_ECX_SVM = 1 << 2

KVM_SIGNATURE_LEAF = 0x4000_0000
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"

# leaf 0xB / 0x1F level types
LEVEL_INVALID = 0
LEVEL_SMT = 1
LEVEL_CORE = 2


class CpuidEntry(NamedTuple):
    """One ``kvm_cpuid_entry2``; ``subleaf`` is its ``index`` (a NamedTuple
    field may not be called ``index``: that is tuple.subleaf)."""

    function: int
    subleaf: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def _apic_id_bits(count: int) -> int:
    """Bits of APIC ID needed to number ``count`` CPUs."""
    return max(0, (count - 1).bit_length())


def _topology(function: int, subleaf: int, apic_id: int, vcpus: int) -> CpuidEntry:
    """Leaf 0xB/0x1F: one thread per core, ``vcpus`` cores in one package."""
    if subleaf == 0:
        eax, ebx, ecx = 0, 1, (LEVEL_SMT << 8) | 0
    elif subleaf == 1:
        eax, ebx, ecx = _apic_id_bits(vcpus), vcpus, (LEVEL_CORE << 8) | 1
    else:
        eax, ebx, ecx = 0, 0, (LEVEL_INVALID << 8) | subleaf
    return CpuidEntry(function, subleaf, CPUID_FLAG_SIGNIFICANT_INDEX, eax, ebx, ecx, apic_id)


def _refine(e: CpuidEntry, apic_id: int, vcpus: int) -> CpuidEntry:
    """One leaf of KVM's supported set, made right for this vCPU."""
    f = e.function
    if f == 0x1:
        ebx = (e.ebx & 0x0000_FFFF) | ((vcpus & 0xFF) << 16) | ((apic_id & 0xFF) << 24)
        ecx = (e.ecx | LEAF1_ECX_HYPERVISOR) & ~LEAF1_ECX_VMX
        edx = e.edx | LEAF1_EDX_HTT if vcpus > 1 else e.edx & ~LEAF1_EDX_HTT
        return e._replace(ebx=ebx, ecx=ecx, edx=edx)
    if f == KVM_SIGNATURE_LEAF:
        sig = KVM_SIGNATURE
        return e._replace(
            ebx=int.from_bytes(sig[0:4], "little"),
            ecx=int.from_bytes(sig[4:8], "little"),
            edx=int.from_bytes(sig[8:12], "little"),
        )
    if f == 0x8000_0001:
        ecx = e.ecx & ~EXT1_ECX_SVM
        ecx = ecx | EXT1_ECX_CMP_LEGACY if vcpus > 1 else ecx & ~EXT1_ECX_CMP_LEGACY
        return e._replace(ecx=ecx)
    if f == 0x8000_0008:
        # AMD: ECX[7:0] = cores - 1, ECX[15:12] = APIC ID bits for cores
        return e._replace(ecx=(e.ecx & ~0xF0FF) | (_apic_id_bits(vcpus) << 12) | ((vcpus - 1) & 0xFF))
    return e


def vcpu_cpuid(supported: list[CpuidEntry], apic_id: int, vcpus: int) -> list[CpuidEntry]:
    """The CPUID table for the vCPU with ``apic_id`` in a machine of ``vcpus``."""
    out: list[CpuidEntry] = []
    for entry in supported:
        f = entry.function
        if f in (0xB, 0x1F):
            continue  # regenerated below, all subleaves
        out.append(_refine(entry, apic_id, vcpus))
    max_leaf = max((e.eax for e in supported if e.function == 0), default=0)
    for leaf in (0xB, 0x1F):
        if max_leaf >= leaf and (leaf == 0xB or any(e.function == leaf for e in supported)):
            out += [_topology(leaf, i, apic_id, vcpus) for i in range(3)]
    return out
