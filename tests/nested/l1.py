"""The nested test host (L1): a Linux under QEMU's TCG with emulated AMD SVM, in
which pyhv gets ordinary hardware-assisted KVM (docs: README.md, "Linux guests").

The L1 is one kernel and one initramfs, built from Debian packages with the
same helpers as ``pyhv image build``:

- the same cloud kernel as the guest, with kvm, irqbypass, kvm-amd and tun;
- busybox, and Python 3.11 from Debian's packages (byte-compiled on the build
  host with unchecked-hash .pyc files, so L1 never compiles);
- this checkout's ``pyhv`` package, ``drive.py`` (what L1 runs) and the
  default guest (L2) from ``pyhv image build``, its root disk carrying
  ``vsock-echo``;
- optionally QEMU from Debian (``qemu-system-x86`` and the libraries it links),
  for the boot-time comparison in bench/linux_boot.py.

L1's init loads the modules, runs ``drive.py MODE`` and powers off, so a run
is ``qemu-system-x86_64 -accel tcg -cpu max -M q35 -kernel vmlinuz -initrd
l1.img`` and everything L1 and L2 print is on QEMU's serial output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pyhv.toolstack import image

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "nested"

L1_MODULES = ("kvm_amd", "tun")
PYTHON_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libffi8", "zlib1g", "libexpat1",
    "libgcc-s1",  # pthread_exit unwinds through it: a thread ending at exit aborts without it
)
#: parts of the Python standard library L1 never uses
PYTHON_PRUNE = (
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "distutils", "unittest", "config-3.11-x86_64-linux-gnu", "sqlite3", "xml", "email",
    "http", "urllib", "xmlrpc", "wsgiref", "asyncio", "multiprocessing", "curses",
    "dbm", "html", "venv", "concurrent", "zoneinfo",
)
QEMU_BINARY = "/usr/bin/qemu-system-x86_64"
QEMU_PACKAGES = ("qemu-system-x86", "qemu-system-data", "seabios")
QEMU_FIRMWARE = ("bios-256k.bin", "bios-microvm.bin", "qboot.rom", "linuxboot_dma.bin", "kvmvapic.bin")

L1_INIT = r"""#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
for m in {modules}; do insmod /lib/modules/{version}/$m.ko; done
ip link set lo up
mode=test
for arg in $(cat /proc/cmdline); do case "$arg" in l1.mode=*) mode="${{arg#l1.mode=}}" ;; esac; done
echo "l1: up in $(cut -d' ' -f1 /proc/uptime) s, $(nproc) cpus, $(ls /dev/kvm), mode $mode"
cd /
PYTHONPATH=/ python3.11 -S /l1/drive.py "$mode"
echo "l1: drive.py exited with status $?"
poweroff -f
"""


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def vsock_echo(out: Path) -> Path:
    """Build the guest's vsock client (a static binary: the guest has no libc)."""
    binary = out / "vsock-echo"
    source = HERE / "vsock_echo.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        _run("gcc", "-static", "-Os", "-o", str(binary), str(source))
    return binary


def l2_images(out: Path) -> Path:
    """The default guest, with vsock-echo added to a copy of its root disk."""
    guest = out / "l2"
    image.build_default_guest(guest, log=lambda _msg: None)
    disk = out / "l2-rootfs.ext4"
    shutil.copyfile(guest / "rootfs.ext4", disk)
    tool = vsock_echo(out)
    _run("debugfs", "-w", "-R", f"write {tool} /bin/vsock-echo", str(disk))
    _run("debugfs", "-w", "-R", "sif /bin/vsock-echo mode 0100755", str(disk))
    return guest


def _python(tree: Path, debs: dict[str, Path]) -> None:
    for name in PYTHON_PACKAGES:
        image.extract(debs[name], tree)
    stdlib = tree / "usr" / "lib" / "python3.11"
    for name in PYTHON_PRUNE:
        shutil.rmtree(stdlib / name, ignore_errors=True)
    for junk in ("usr/share", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/audit",
                 "usr/libexec", "var"):
        shutil.rmtree(tree / junk, ignore_errors=True)
    for so in (stdlib / "lib-dynload").glob("_test*"):
        so.unlink()


def _qemu(tree: Path, work: Path) -> list[str]:
    """qemu-system-x86, its firmware, and the packages of the libraries it links (ldd on this host)."""
    libs = [line.split("=>")[1].split()[0] for line in _run("ldd", QEMU_BINARY).splitlines() if "=> /" in line]
    owners = set()
    for lib in libs:
        real = os.path.realpath(lib)
        for candidate in (lib, real, real.replace("/usr/lib/", "/lib/"), real.replace("/lib/", "/usr/lib/", 1)):
            p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
            if p.returncode == 0:
                owners.add(p.stdout.split(":")[0])
                break
    packages = sorted(owners | set(QEMU_PACKAGES))
    debs = image.download(packages, work / "debs")
    staging = work / "qemu-staging"
    shutil.rmtree(staging, ignore_errors=True)
    for name in packages:
        image.extract(debs[name], staging)
    for binary in ("usr/bin/qemu-system-x86_64",):
        (tree / binary).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(staging / binary, tree / binary)
    for lib_dir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        if not (staging / lib_dir).is_dir():
            continue
        (tree / lib_dir).mkdir(parents=True, exist_ok=True)
        for src in (staging / lib_dir).iterdir():  # the shared libraries only, not their plugin directories
            dst = tree / lib_dir / src.name
            if src.name.startswith("lib") and ".so" in src.name and not (dst.exists() or dst.is_symlink()):
                shutil.copy2(src, dst, follow_symlinks=False)
    for fw in QEMU_FIRMWARE:
        for share in ("usr/share/qemu", "usr/share/seabios"):
            src = staging / share / fw
            if src.exists() or src.is_symlink():
                (tree / share).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src if src.exists() else staging / share / os.readlink(src), tree / share / fw)
    shutil.rmtree(staging)
    return packages


def build(with_qemu: bool = False, out: Path = BUILD) -> tuple[Path, Path]:
    """Build L1's kernel and initramfs under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    image.require_apt()
    kernel_pkg = image.kernel_package()
    version = kernel_pkg.removeprefix("linux-image-")
    debs = image.download([kernel_pkg, image.BUSYBOX_PACKAGE, *PYTHON_PACKAGES], out / "debs")
    guest = l2_images(out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    tree, kernel_root = work / "tree", work / "kernel"
    image.extract(debs[kernel_pkg], kernel_root)
    busybox_root = work / "busybox"
    image.extract(debs[image.BUSYBOX_PACKAGE], busybox_root)
    index = image.module_index(kernel_root / "lib" / "modules" / version)
    modules = image.module_closure(index, L1_MODULES)
    image.guest_tree(tree, busybox_root, index, version, modules)
    for name in ("rc", "inittab", "load-modules"):
        (tree / "etc" / name).unlink()
    _python(tree, debs)
    if with_qemu:
        _qemu(tree, out)
    shutil.copytree(ROOT / "pyhv", tree / "pyhv", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "l1").mkdir()
    shutil.copyfile(HERE / "drive.py", tree / "l1" / "drive.py")
    (tree / "l2").mkdir()
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(guest / name, tree / "l2" / name)
    shutil.copyfile(out / "l2-rootfs.ext4", tree / "l2" / "rootfs.ext4")
    subprocess.run(
        ["/usr/bin/python3.11", "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
         str(tree / "usr" / "lib" / "python3.11"), str(tree / "pyhv"), str(tree / "l1")],
        check=True, capture_output=True,
    )
    init = L1_INIT.format(modules=" ".join(modules), version=version)
    initrd = out / ("l1-qemu.img" if with_qemu else "l1.img")
    initrd.write_bytes(image.initramfs(tree, init))
    kernel = out / "vmlinuz"
    shutil.copyfile(kernel_root / "boot" / f"vmlinuz-{version}", kernel)
    shutil.rmtree(work)
    return kernel, initrd


def qemu_command(kernel: Path, initrd: Path, mode: str, memory: str = "2G", cpus: int = 2) -> list[str]:
    """The command that runs L1 (serial on stdout, no display, exits when L1 powers off)."""
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", memory, "-smp", str(cpus),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 quiet l1.mode={mode}",
    ]
