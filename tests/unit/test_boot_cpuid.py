from pyhv.boot.cpuid import (
    KVM_SIGNATURE_LEAF,
    LEAF1_ECX_HYPERVISOR,
    LEAF1_ECX_VMX,
    CpuidEntry,
    vcpu_cpuid,
)

SUPPORTED = [
    CpuidEntry(0x0, 0, 0, 0x1C, 0x68747541, 0x444D4163, 0x69746E65),
    CpuidEntry(0x1, 0, 0, 0xA10F11, 0x01020800, 0x81202000 | LEAF1_ECX_VMX, 0x078BFBFF),
    CpuidEntry(0xB, 0, 1, 0, 0, 0, 1),
    CpuidEntry(KVM_SIGNATURE_LEAF, 0, 0, 0x40000001, 0, 0, 0),
    CpuidEntry(0x80000001, 0, 0, 0xA10F11, 0, 0x400397, 0),
    CpuidEntry(0x80000008, 0, 0, 0x3030, 0, 0x7001, 0),
]


def _leaf(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    return next(e for e in entries if e.function == function and e.subleaf == index)


def test_leaf1_carries_apic_id_and_cpu_count() -> None:
    leaf1 = _leaf(vcpu_cpuid(SUPPORTED, apic_id=3, vcpus=4), 1)
    assert (leaf1.ebx >> 24, (leaf1.ebx >> 16) & 0xFF) == (3, 4)


def test_hypervisor_bit_set_and_vmx_hidden() -> None:
    leaf1 = _leaf(vcpu_cpuid(SUPPORTED, apic_id=0, vcpus=1), 1)
    assert leaf1.ecx & LEAF1_ECX_HYPERVISOR and not leaf1.ecx & LEAF1_ECX_VMX


def test_leaf_b_describes_all_cpus_as_cores_of_one_package() -> None:
    entries = vcpu_cpuid(SUPPORTED, apic_id=5, vcpus=8)
    smt, core, end = (_leaf(entries, 0xB, i) for i in range(3))
    assert (smt.ebx, core.ebx, core.eax, core.edx, end.ebx) == (1, 8, 3, 5, 0)


def test_kvm_signature_leaf_says_kvmkvmkvm() -> None:
    sig = _leaf(vcpu_cpuid(SUPPORTED, apic_id=0, vcpus=1), KVM_SIGNATURE_LEAF)
    raw = b"".join(v.to_bytes(4, "little") for v in (sig.ebx, sig.ecx, sig.edx))
    assert raw == b"KVMKVMKVM\0\0\0"


def test_amd_core_count_leaf_matches_vcpus() -> None:
    leaf = _leaf(vcpu_cpuid(SUPPORTED, apic_id=0, vcpus=4), 0x80000008)
    assert (leaf.ecx & 0xFF, (leaf.ecx >> 12) & 0xF) == (3, 2)


def test_svm_hidden_in_extended_features() -> None:
    leaf = _leaf(vcpu_cpuid(SUPPORTED, apic_id=0, vcpus=1), 0x80000001)
    assert not leaf.ecx & (1 << 2)
