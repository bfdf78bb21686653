"""The default Linux guest, built from Debian packages (``pyhv image build``).

Three files in a cache directory, and where they came from:

- ``vmlinuz``: the bzImage of Debian's cloud kernel (the package that
  ``linux-image-cloud-amd64`` depends on);
- ``initrd.img``: a gzipped cpio (newc) archive holding ``busybox-static``, the
  kernel's own modules for the devices pyhv offers (virtio_pci, virtio_blk,
  virtio_net, vsock, virtio-rng, virtio_balloon and what they depend on) and an
  init that loads them, mounts a root disk if ``root=`` names one, brings up
  the network and starts a shell on the console;
- ``rootfs.ext4``: the same tree as an ext4 image (``mkfs.ext4 -d``) for a disk
  root (``--disk rootfs.ext4 --cmdline "root=/dev/vda ..."``);
- ``provenance.json``: package names and versions, the module list, each
  file's size and SHA-256.

Packages come through ``apt-get download`` and are unpacked with ``dpkg-deb
-x``; nothing is installed on the host.  The pieces (cpio writer, module
dependency closure, .deb helpers) are also used to build the nested test host
(tests/nested/).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import PyhvError, UsageError

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: the drivers the default guest loads: one per pyhv device
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport", "virtio_rng", "virtio_balloon")
ROOTFS_SIZE_MIB = 64


class ImageBuildError(PyhvError):
    """The default guest could not be built (no apt, a package missing, a tool failing)."""


# -- cpio (newc), the initramfs format -----------------------------------------------


class Cpio:
    """A "newc" cpio archive, as the kernel unpacks it (Documentation/driver-api/early-userspace/
    buffer-format.rst): 110-byte ASCII headers, names and data padded to 4 bytes, ``TRAILER!!!`` last."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if name in self._names:
            return
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), stat.S_IFDIR | mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def add_tree(self, root: Path, prefix: str = "") -> None:
        """Every directory, file and symlink under ``root``, named from ``prefix``."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = prefix.strip("/") if rel == "." else os.path.join(prefix.strip("/"), rel).strip("/")
            if base:
                self.add_dir(base, stat.S_IMODE(os.lstat(dirpath).st_mode))
            for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                arc = f"{base}/{name}" if base else name
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(arc, os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(arc, Path(path).read_bytes(), stat.S_IMODE(st.st_mode))

    def _parents(self, name: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent and parent not in self._names:
            self.add_dir(parent)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self._out)


# -- kernel modules -----------------------------------------------------------------


def module_name(path: str | Path) -> str:
    """``.../virtio-rng.ko`` -> ``virtio_rng`` (the kernel treats - and _ alike)."""
    return Path(path).name.removesuffix(".ko").replace("-", "_")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name -> .ko file under ``lib/modules/VERSION``."""
    return {module_name(p): p for p in sorted(modules_dir.rglob("*.ko"))}


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a module's .modinfo strings."""
    at = ko.find(b"\0depends=")
    if at < 0:
        return []
    try:
        value = ko[at + 9 : ko.index(b"\0", at + 9)].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ImageBuildError("a kernel module's depends= entry is unreadable") from None
    return [module_name(d) for d in value.split(",") if d]


def module_closure(index: dict[str, Path], wanted: Iterable[str]) -> list[str]:
    """``wanted`` and their dependencies, each after what it depends on (insmod order)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = module_name(name)
        if name in order:
            return
        if name not in index:
            raise ImageBuildError(f"kernel module {name} is not in the kernel package")
        if name in visiting:
            raise ImageBuildError(f"kernel module {name} depends on itself")
        visiting.add(name)
        for dep in module_depends(index[name].read_bytes()):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


# -- Debian packages ----------------------------------------------------------------


def _tool(*argv: str, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ImageBuildError(f"{argv[0]} is not installed") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ImageBuildError(f"{' '.join(argv[:3])} failed: {last}")
    return p.stdout


def require_apt() -> None:
    missing = [t for t in ("apt-get", "apt-cache", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(
            f"building the default guest needs Debian's package tools ({', '.join(missing)} not found); "
            "without them boot your own kernel and initramfs: pyhv run --kernel BZIMAGE --initrd INITRD"
        )


def kernel_package() -> str:
    """The versioned image package ``linux-image-cloud-amd64`` depends on."""
    out = _tool("apt-cache", "depends", KERNEL_META_PACKAGE)
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith("linux-image-") and dep[12:13].isdigit():
            return dep
    raise ImageBuildError(f"apt does not know {KERNEL_META_PACKAGE} (try: apt-get update)")


def download(packages: Iterable[str], dest: Path) -> dict[str, Path]:
    """``apt-get download`` each package into ``dest`` (kept when already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = list(packages)

    def present() -> dict[str, Path]:
        debs = {deb.name.split("_")[0]: deb for deb in sorted(dest.glob("*.deb"))}
        return {name: debs[name] for name in wanted if name in debs}

    found = present()
    missing = [p for p in wanted if p not in found]
    if missing:
        _tool("apt-get", "download", "-q", *missing, cwd=dest)
        found = present()
    absent = [p for p in wanted if p not in found]
    if absent:
        raise ImageBuildError(f"apt-get download did not fetch {', '.join(absent)}")
    return found


def deb_version(deb: Path) -> str:
    return _tool("dpkg-deb", "-f", str(deb), "Version").strip()


def extract(deb: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _tool("dpkg-deb", "-x", str(deb), str(root))


# -- the default guest --------------------------------------------------------------

INIT = r"""#!/bin/sh
# pyhv default guest, initramfs stage: load the device drivers, then either
# switch to the root disk (root=/dev/vdX) or stay on the initramfs.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "pyhv-guest: init reached, kernel $(uname -r)"
/etc/load-modules
root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root="${arg#root=}" ;; esac
done
if [ -n "$root" ]; then
    mkdir -p /newroot
    if mount -t ext4 "$root" /newroot && [ -x /newroot/sbin/init ]; then
        umount /proc /sys
        mount --move /dev /newroot/dev
        exec switch_root /newroot /sbin/init
    fi
    echo "pyhv-guest: cannot mount root $root; staying on the initramfs"
fi
umount /proc /sys /dev
exec /sbin/init
"""

LOAD_MODULES = """#!/bin/sh
for m in {modules}; do
    insmod /lib/modules/{version}/$m.ko 2>/dev/null
done
"""

RC = r"""#!/bin/sh
# sysinit (busybox init): file systems, network, then the console shell starts.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts
mount -o remount,rw / 2>/dev/null
/etc/load-modules
hostname pyhv-guest
ip link set lo up
ip=; gw=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pyhv.ip=*) ip="${arg#pyhv.ip=}" ;;
        pyhv.gw=*) gw="${arg#pyhv.gw=}" ;;
    esac
done
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] && ip link set "${dev##*/}" up
done
if [ -n "$ip" ] && [ -e /sys/class/net/eth0 ]; then
    ip addr add "$ip" dev eth0
    [ -n "$gw" ] && ip route add default via "$gw"
fi
echo "pyhv-guest: ready, $(nproc) cpus, root $(awk '$2 == "/" {print $1}' /proc/mounts | tail -n1)"
"""

INITTAB = """::sysinit:/etc/rc
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
"""

PROFILE = r"""export PATH=/sbin:/bin
export PS1='\u@\h:\w\$ '
"""


def guest_tree(root: Path, busybox_root: Path, index: dict[str, Path], version: str, modules: list[str]) -> None:
    """Lay out the default guest's files under ``root`` (without /init); ``index``
    is the kernel's :func:`module_index`."""
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "mnt", "newroot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox_root / "bin" / "busybox", root / "bin" / "busybox")
    applets = _tool(str(root / "bin" / "busybox"), "--list-full").split()
    for applet in applets:
        if Path(applet).is_absolute() or ".." in Path(applet).parts:
            raise ImageBuildError(f"busybox lists an applet outside the tree: {applet!r}")
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(root / "bin" / "busybox", link.parent))
    moddir = root / "lib" / "modules" / version
    moddir.mkdir(parents=True, exist_ok=True)
    for name in modules:
        shutil.copy2(index[name], moddir / f"{name}.ko")
    _write(root / "etc" / "load-modules", LOAD_MODULES.format(modules=" ".join(modules), version=version), 0o755)
    _write(root / "etc" / "rc", RC, 0o755)
    _write(root / "etc" / "inittab", INITTAB)
    _write(root / "etc" / "profile", PROFILE)
    _write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc" / "group", "root:x:0:\n")
    _write(root / "etc" / "hostname", "pyhv-guest\n")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def initramfs(tree: Path, init: str = INIT) -> bytes:
    """``tree`` plus ``/init`` and ``/dev/console`` as a gzipped newc cpio."""
    archive = Cpio()
    archive.add_tree(tree)
    archive.add_file("init", init.encode(), 0o755)
    archive.add_char_device("dev/console", 5, 1)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def ext4_image(tree: Path, path: Path, size_mib: int = ROOTFS_SIZE_MIB) -> None:
    """An ext4 file system image holding ``tree`` (mkfs.ext4 -d)."""
    if shutil.which("mkfs.ext4") is None:
        raise ImageBuildError("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    _tool("mkfs.ext4", "-q", "-F", "-L", "pyhv-root", "-d", str(tree), str(path))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyhv" / "images" / "default"


def recipe() -> str:
    """A digest of what goes into the image besides the packages (scripts, modules):
    a cached image made by another recipe is built again."""
    parts = [INIT, LOAD_MODULES, RC, INITTAB, PROFILE, " ".join(GUEST_MODULES)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_default_guest(dest: Path, force: bool = False, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Build (or find cached) vmlinuz, initrd.img, rootfs.ext4 and provenance.json in ``dest``."""
    provenance_path = dest / "provenance.json"
    outputs = [dest / "vmlinuz", dest / "initrd.img", dest / "rootfs.ext4"]
    if not force and provenance_path.exists() and all(p.exists() for p in outputs):
        try:
            cached = json.loads(provenance_path.read_text())
        except ValueError:
            cached = None  # a damaged cache is built again
        if isinstance(cached, dict) and cached.get("recipe") == recipe():
            log(f"pyhv image: cached in {dest} (built {cached.get('built')}; --force builds again)")
            return cached
        log("pyhv image: the cached image was made by another recipe; building again")
    require_apt()
    kernel_pkg = kernel_package()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyhv-image-") as tmp:
        work = Path(tmp)
        log(f"pyhv image: downloading {kernel_pkg} and {BUSYBOX_PACKAGE}")
        debs = download([kernel_pkg, BUSYBOX_PACKAGE], work / "debs")
        kernel_root, busybox_root, tree = work / "kernel", work / "busybox", work / "tree"
        extract(debs[kernel_pkg], kernel_root)
        extract(debs[BUSYBOX_PACKAGE], busybox_root)
        version = kernel_pkg.removeprefix("linux-image-")
        index = module_index(kernel_root / "lib" / "modules" / version)
        modules = module_closure(index, GUEST_MODULES)
        guest_tree(tree, busybox_root, index, version, modules)
        log(f"pyhv image: initramfs with busybox and {len(modules)} modules")
        (dest / "initrd.img.tmp").write_bytes(initramfs(tree))
        ext4_image(tree, dest / "rootfs.ext4.tmp")
        shutil.copyfile(kernel_root / "boot" / f"vmlinuz-{version}", dest / "vmlinuz.tmp")
        provenance: dict[str, object] = {
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "recipe": recipe(),
            "kernel": version,
            "packages": {name: deb_version(deb) for name, deb in sorted(debs.items())},
            "modules": modules,
            "files": {},
        }
    for out in outputs:
        os.replace(out.with_name(out.name + ".tmp"), out)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        provenance["files"][out.name] = {"size": out.stat().st_size, "sha256": digest}  # type: ignore[index]
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"pyhv image: {dest}")
    return provenance


def build_command(dest: str | None, force: bool) -> int:
    """``pyhv image build``: print where the guest is and how to boot it."""
    path = Path(dest) if dest else default_cache_dir()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--dir {path}: not a directory")
    provenance = build_default_guest(path, force=force)
    print(f"kernel {provenance['kernel']}: {path}/vmlinuz, {path}/initrd.img, {path}/rootfs.ext4")
    print(f"boot it: pyhv run --kernel {path}/vmlinuz --initrd {path}/initrd.img --cmdline console=ttyS0")
    return 0
