import re

import pytest

from pyhv.jail.plan import HostFile, JailError, Mount, plan
from pyhv.model import from_plain


def desc(**extra):
    return from_plain({"kernel": "/k/vmlinuz", **extra})


def test_plan_hands_kernel_initrd_ro_and_disks_as_described():
    d = desc(initrd="/k/initrd", disks=[{"path": "/img/a.img"}, {"path": "/img/b.img", "readonly": True,
                                                                  "cache": "none"}])
    p = plan(d, "/run/pyhv/jail/web", 3)
    assert p.files == (HostFile("/k/vmlinuz", False, False), HostFile("/k/initrd", False, False),
                       HostFile("/img/a.img", True, False), HostFile("/img/b.img", False, True))
    assert (p.uid, p.gid) == (100003, 100003)
    assert [x[0] for x in p.devices] == ["dev/kvm", "dev/net/tun", "dev/urandom"]
    assert p.mounts == () and p.sockets == ()


def test_plan_binds_the_vsock_folder_read_only_and_hands_its_socket():
    p = plan(desc(vsock={"cid": 3, "uds": "/srv/vm/v.sock"}), "/j", 0)
    assert p.mounts == (Mount("/srv/vm", "srv/vm", True),)
    assert p.sockets == ("/srv/vm/v.sock",)


def test_plan_hands_fw_cfg_files_and_bounds_tasks_by_vcpus():
    p = plan(desc(vcpus=4, fw_cfg=[{"name": "opt/a", "file": "/etc/a"}, {"name": "opt/b", "string": "x"}]), "/j", 0)
    assert HostFile("/etc/a", False, False) in p.files
    assert dict(p.rlimits)["NPROC"] == 4 + 128


def test_plan_refuses_out_of_range_and_relative_root():
    with pytest.raises(JailError):
        plan(desc(), "/j", 5, count=5)
    with pytest.raises(JailError):
        plan(desc(), "j", 0)


def test_plan_binds_the_folders_of_vhost_user_back_ends_sockets():
    d = desc(disks=[{"vhost_user": "/run/blk/s.sock"}], fs=[{"tag": "b", "socket": "/run/vfs/b.sock"}])

    p = plan(d, "/run/pyhv/jail/web", 0)

    assert p.mounts == (Mount("/run/blk", "run/blk", True), Mount("/run/vfs", "run/vfs", True))


@pytest.mark.parametrize("extra,key", [
    ({"fs": [{"tag": "a", "path": "/srv/share"}]}, "fs[0].path"),
    ({"disks": [{"path": "/img/o.qcow2", "base": "/img/base.img"}]}, "disks[0].base"),
])
def test_plan_refuses_back_ends_pyhv_would_start_itself(extra, key):
    with pytest.raises(JailError, match="^" + re.escape(key) + ": a confined domain cannot start"):
        plan(desc(**extra), "/j", 0)
