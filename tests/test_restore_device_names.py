"""Device names on the new machine (boot/restore/device_names.py): the saved-to-new map of a
real plan, and fstab, crypttab, grub.cfg and /etc/default/grub text as Debian 12 writes them,
rewritten whole-token only."""

from __future__ import annotations

from initrd_composer.boot.restore.device_names import device_map, rewrite_device_names
from initrd_composer.boot.restore.from_layout import plan_inputs
from initrd_composer.boot.restore.model import GIB, MIB, SourceDisk, SourcePartition, TargetDisk
from initrd_composer.boot.restore.sizing import plan_restore
from tests.test_restore_from_layout import source_layout

LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
M = MIB // 512

FSTAB = """\
# /etc/fstab: static file system information.
#
# Use 'blkid' to print the universally unique identifier for a
# device; this may be used with UUID= as a more robust way to name devices
# that works even if disks are added and removed. See fstab(5).
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/mapper/vg0-root /               ext4    errors=remount-ro 0       1
# /boot was on /dev/vda2 during installation
/dev/vda2       /boot           ext4    defaults        0       2
/dev/vg0/srv    /srv            xfs     defaults        0       2
/dev/vda3\tnone\tswap\tsw\t0\t0
/dev/vda20      /big            xfs     noauto          0       0
UUID=3b1f2c4d-0000-4000-8000-0000000000b0 /mnt/boot ext4 noauto 0 0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
"""

GRUB_CFG = """\
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-3b1f2c4d' {
\tload_video
\tinsmod gzio
\tif [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
\tinsmod part_gpt
\tinsmod ext2
\tset root='hd0,gpt2'
\tif [ x$feature_platform_search_hint = xy ]; then
\t  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,gpt2 --hint-efi=hd0,gpt2 --hint-baremetal=ahci0,gpt2  3b1f2c4d-0000-4000-8000-0000000000b0
\tfi
\techo\t'Loading Linux 6.1.0-18-amd64 ...'
\tlinux\t/vmlinuz-6.1.0-18-amd64 root=/dev/mapper/vg0-root ro resume=/dev/vda3 quiet
\tinitrd\t/initrd.img-6.1.0-18-amd64
}
"""  # noqa: E501 - grub-mkconfig's own line


def _plan_onto_nvme() -> dict[str, str]:
    inputs = plan_inputs(source_layout())
    return device_map(plan_restore(inputs.sources, [TargetDisk("nvme0n1", 10 * GIB, 512)], inputs.vgs))


def test_the_map_names_every_disk_and_partition_the_kernel_way() -> None:
    assert _plan_onto_nvme() == {
        "/dev/vda": "/dev/nvme0n1", "/dev/vda1": "/dev/nvme0n1p1", "/dev/vda2": "/dev/nvme0n1p2",
        "/dev/vda3": "/dev/nvme0n1p3", "/dev/vda4": "/dev/nvme0n1p4",
    }  # fmt: skip


def test_fstab_is_rewritten_whole_token_and_comments_stay() -> None:
    text, changes = rewrite_device_names(FSTAB, _plan_onto_nvme())
    assert changes == ["line 9: /dev/vda2 -> /dev/nvme0n1p2", "line 10: /dev/vda2 -> /dev/nvme0n1p2",
                       "line 12: /dev/vda3 -> /dev/nvme0n1p3"]  # fmt: skip
    assert text.splitlines()[8] == "# /boot was on /dev/nvme0n1p2 during installation"
    assert "/dev/nvme0n1p2       /boot           ext4    defaults" in text
    assert "\n/dev/nvme0n1p3\tnone\tswap\tsw\t0\t0\n" in text
    # What is not a planned partition's name stays, byte for byte.
    unchanged = [i for i in range(len(FSTAB.splitlines())) if i not in (8, 9, 11)]
    assert [text.splitlines()[i] for i in unchanged] == [FSTAB.splitlines()[i] for i in unchanged]
    assert text.count("\n") == FSTAB.count("\n")


def test_grub_disk_names_stay_and_kernel_arguments_change() -> None:
    text, changes = rewrite_device_names(GRUB_CFG, _plan_onto_nvme())
    assert changes == ["line 12: /dev/vda3 -> /dev/nvme0n1p3"]
    assert "set root='hd0,gpt2'" in text and "--hint-bios=hd0,gpt2" in text
    assert "root=/dev/mapper/vg0-root ro resume=/dev/nvme0n1p3 quiet" in text
    default = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="resume=/dev/vda3"\n'
    text, changes = rewrite_device_names(default, _plan_onto_nvme())
    assert text.endswith('GRUB_CMDLINE_LINUX="resume=/dev/nvme0n1p3"\n') and changes == [
        "line 3: /dev/vda3 -> /dev/nvme0n1p3"]  # fmt: skip


def test_crypttab_whole_disks_and_look_alikes() -> None:
    text, changes = rewrite_device_names(
        "# <target name> <source device> <key file> <options>\n"
        "crypt_data /dev/vda4 none luks,discard\n"
        "install_devices=/dev/vda, /dev/vda1.\n"
        "/mnt/dev/vda2 /dev/vda2.bak /dev/vda2-old /dev/vda2x (/dev/vda2) '/dev/vda'\r\n",
        _plan_onto_nvme(),
    )
    assert text.splitlines(keepends=True)[1:] == [
        "crypt_data /dev/nvme0n1p4 none luks,discard\n",
        "install_devices=/dev/nvme0n1, /dev/nvme0n1p1.\n",
        "/mnt/dev/vda2 /dev/vda2.bak /dev/vda2-old /dev/vda2x (/dev/nvme0n1p2) '/dev/nvme0n1'\r\n",
    ]
    assert changes[-1] == "line 4: /dev/vda -> /dev/nvme0n1"


def test_disks_that_swap_names_are_rewritten_once() -> None:
    """sda goes to sdb and sdb to sda (by serial): one pass, or sda2 would come back as sda2."""
    parts = (SourcePartition(1, M, 100 * M, LINUX, "/a", "ext4", MIB),
             SourcePartition(2, 101 * M, 100 * M, LINUX, "/b", "ext4", MIB))  # fmt: skip
    sources = [SourceDisk("sda", GIB, 512, serial="A", partitions=parts),
               SourceDisk("sdb", GIB, 512, serial="B", partitions=parts)]  # fmt: skip
    targets = [TargetDisk("sda", GIB, 512, serial="B"), TargetDisk("sdb", GIB, 512, serial="A")]
    mapping = device_map(plan_restore(sources, targets))
    assert mapping["/dev/sda2"] == "/dev/sdb2" and mapping["/dev/sdb1"] == "/dev/sda1"
    text, changes = rewrite_device_names("/dev/sda2 /a ext4\n/dev/sdb1 /b ext4\n", mapping)
    assert text == "/dev/sdb2 /a ext4\n/dev/sda1 /b ext4\n"
    assert changes == ["line 1: /dev/sda2 -> /dev/sdb2", "line 2: /dev/sdb1 -> /dev/sda1"]


def test_nothing_to_change() -> None:
    assert rewrite_device_names(FSTAB, {"/dev/vda2": "/dev/vda2"}) == (FSTAB, [])
    assert rewrite_device_names("", _plan_onto_nvme()) == ("", [])
