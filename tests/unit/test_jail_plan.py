import pytest

from pyhv.jail.plan import JailError, plan
from pyhv.model import from_plain


def desc(**extra):
    return from_plain({"kernel": "/k/vmlinuz", **extra})


def test_plan_binds_kernel_ro_and_disks_as_described():
    d = desc(initrd="/k/initrd", disks=[{"path": "/img/a.img"}, {"path": "/img/b.img", "readonly": True}])
    p = plan(d, "/run/pyhv/jail/web", 3)
    assert [(m.source, m.target, m.readonly) for m in p.mounts] == [
        ("/k/vmlinuz", "k/vmlinuz", True), ("/k/initrd", "k/initrd", True),
        ("/img/a.img", "img/a.img", False), ("/img/b.img", "img/b.img", True)]
    assert (p.uid, p.gid) == (100003, 100003)
    assert [x[0] for x in p.devices] == ["dev/kvm", "dev/net/tun", "dev/urandom"]


def test_plan_refuses_out_of_range_and_relative_root():
    with pytest.raises(JailError):
        plan(desc(), "/j", 5, count=5)
    with pytest.raises(JailError):
        plan(desc(), "j", 0)


def test_plan_binds_vhost_user_bases_sockets_and_shared_directories():
    d = desc(disks=[{"path": "/img/o.qcow2", "base": "/img/base.img"}, {"vhost_user": "/run/blk/s.sock"}],
             fs=[{"tag": "a", "path": "/srv/share"}, {"tag": "b", "socket": "/run/vfs/b.sock"}])

    p = plan(d, "/run/pyhv/jail/web", 0)

    assert [(m.source, m.readonly) for m in p.mounts][1:] == [
        ("/img/o.qcow2", False), ("/img/base.img", True), ("/run/blk", False), ("/run/vfs", False), ("/srv/share", False)]
