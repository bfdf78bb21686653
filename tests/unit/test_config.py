import pytest

from pyhv.errors import UsageError
from pyhv.memory import MiB
from pyhv.vmm.config import MachineConfig, parse_size


@pytest.mark.parametrize(
    "text,size",
    [("256M", 256 * MiB), ("1G", 1024 * MiB), ("512", 512 * MiB), ("65536k", 64 * MiB), ("2GiB", 2048 * MiB)],
)
def test_sizes_parse_with_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12Q", "-5M", "1.5G"])
def test_bad_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_too_little_memory_is_refused() -> None:
    with pytest.raises(UsageError, match="16 MiB"):
        MachineConfig(kernel="k", memory=MiB)


def test_zero_vcpus_is_refused() -> None:
    with pytest.raises(UsageError, match="vcpus"):
        MachineConfig(kernel="k", vcpus=0)


def test_disk_spec_with_options_parses() -> None:
    from pyhv.vmm.config import DiskConfig, parse_disk

    assert parse_disk("/tmp/d.img,ro,serial=abc") == DiskConfig("/tmp/d.img", True, "abc")


@pytest.mark.parametrize("spec", ["", ",ro", "/d,rw", "/d,serial=" + "x" * 21, "/d,serial"])
def test_bad_disk_spec_is_a_usage_error(spec: str) -> None:
    from pyhv.vmm.config import parse_disk

    with pytest.raises(UsageError):
        parse_disk(spec)
