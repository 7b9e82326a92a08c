"""A real Debian 12 source machine on a virtual disk, for the capture and restore tests.

Built once and cached (the recipe's hash names the files), in three steps:

1. `mmdebstrap --variant=apt` makes a root tarball with the kernel, GRUB, LVM and xfsprogs
   (about 75 s, 790 MB);
2. the disk is laid out and filled inside a QEMU guest running our own rescue image in
   `expert` mode, because this host's kernel has neither md nor device-mapper: GPT with a
   BIOS-boot partition, ext4 /boot, swap, and an LVM VG `vg0` holding an ext4 root and an
   xfs /srv; the tarball (a read-only drive of its own, read as a raw tar stream) is
   extracted with libarchive (the image's Python), GRUB installed
   from the new system's chroot (tools called by full path: the image's busybox would run
   its own applet for a bare `mkswap`) with a hand-written grub.cfg (grub-mkconfig's probing is
   not worth its time under TCG), and the awkward files a restore must keep are made
   (AWKWARD_SH);
3. the disk boots from SeaBIOS to MARKER, printed on ttyS0 by a systemd unit, so the source
   is known to be a working machine before anything captures it.

Two things make it a hard machine to move: its initramfs is built with MODULES=dep (it holds
virtio_blk, not the other disk drivers), and fstab names its swap by device (/dev/vda3), as
older installations do; the marker line says which swap came up.

Partial files never look finished: each step writes NAME.partial and renames it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.runner import run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

CACHE = Path(os.environ.get("INITRD_COMPOSER_SOURCE_CACHE", "/var/cache/initrd-composer/source-machine"))
MARKER = "initrd-composer-source-marker"
DISK_BYTES = 6 << 30
PACKAGES = ("linux-image-amd64", "grub-pc", "systemd-sysv", "udev", "initramfs-tools", "lvm2", "xfsprogs",
            "acl", "attr", "libcap2-bin")  # fmt: skip
# Fixed identities, so tests can name what they expect to find after a restore.
UUIDS = {
    "boot": "3c1f5a2e-6b0d-4c7e-9a51-0d2b7e4f8a10",
    "root": "9e2d4b61-1f3a-4c85-b7d0-5a6e8c2f1b22",
    "srv": "5b8e1c3d-2a4f-4e6b-8c9d-7f0a1b2c3d33",
    "swap": "7d6c5b4a-3e2f-4a1b-9c8d-6e5f4a3b2c44",
}

# The guest's build, run by the image's busybox sh from the helper disk mounted at /src.
BUILD_SH = r"""set -eu
D=/dev/vda
sfdisk --quiet --wipe always $D <<EOF
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=384MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot
size=256MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap
type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=lvm
EOF
n=0; while [ ! -b ${D}4 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
lvm pvcreate -ff -y ${D}4
lvm vgcreate vg0 ${D}4
lvm lvcreate -y -L 3G -n root vg0
lvm lvcreate -y -L 1G -n srv vg0
mkfs.ext4 -q -F -U @boot@ -L boot ${D}2
mkfs.ext4 -q -F -U @root@ -L root /dev/vg0/root
mkfs.xfs -q -f -m uuid=@srv@ -L srv /dev/vg0/srv
mkdir -p /target
mount -t ext4 /dev/vg0/root /target
mkdir -p /target/boot /target/srv
mount -t ext4 ${D}2 /target/boot
mount -t xfs /dev/vg0/srv /target/srv
PYTHONPATH=/usr/lib/initrd-composer/python python3 /src/extract.py /dev/vdc /target
mount -o bind /dev /target/dev
mount -t proc proc /target/proc
mount -t sysfs sys /target/sys
chroot /target /sbin/mkswap -U @swap@ -L swap ${D}3
chroot /target /usr/sbin/grub-install --target=i386-pc --boot-directory=/boot $D
KVER=$(ls /target/boot | sed -n 's/^vmlinuz-//p' | head -n 1)
cat > /target/boot/grub/grub.cfg <<EOF
set timeout=0
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root @boot@
linux /vmlinuz-$KVER root=/dev/mapper/vg0-root ro console=ttyS0,115200n8 no_timer_check
initrd /initrd.img-$KVER
boot
EOF
cat > /target/etc/fstab <<EOF
/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1
UUID=@boot@ /boot ext4 defaults 0 2
/dev/mapper/vg0-srv /srv xfs defaults 0 2
/dev/vda3 none swap sw 0 0
EOF
# MODULES=dep: the initramfs carries this machine's disk driver (virtio_blk) and not the
# others, as on many installed systems, so a restore onto another controller boots only if
# it rebuilds the initramfs there
sed -i 's/^MODULES=.*/MODULES=dep/' /target/etc/initramfs-tools/initramfs.conf
chroot /target /usr/sbin/update-initramfs -u -k all
echo source > /target/etc/hostname
cat > /target/etc/systemd/system/source-marker.service <<'EOF'
[Unit]
Description=print the source machine's marker on the serial console
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo @marker@ files=$$(ls -A /srv/awkward | wc -l) \
  colour=$$(getfattr --only-values -n user.colour /srv/awkward/xattrs) $$(getcap /srv/awkward/capped) \
  swap=$$(sed -n 2p /proc/swaps | cut -d" " -f1)'
StandardOutput=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/source-marker.service /target/etc/systemd/system/multi-user.target.wants/
cp /src/awkward.sh /target/awkward.sh
chroot /target /bin/bash /awkward.sh
rm /target/awkward.sh
umount /target/sys /target/proc /target/dev /target/srv /target/boot /target
lvm vgchange -an vg0
sync
"""

EXTRACT_PY = """import os, sys
import libarchive
from libarchive import extract
flags = (extract.EXTRACT_OWNER | extract.EXTRACT_PERM | extract.EXTRACT_TIME | extract.EXTRACT_ACL
         | extract.EXTRACT_XATTR | extract.EXTRACT_FFLAGS | extract.EXTRACT_SPARSE)
os.chdir(sys.argv[2])
libarchive.extract_file(sys.argv[1], flags)
"""

# Files a restore must give back exactly; made in the new system's chroot with its own tools.
AWKWARD_SH = r"""set -eu
for top in /srv /root; do
  d=$top/awkward; mkdir -p $d; cd $d
  echo one > hard-a; ln hard-a hard-b
  truncate -s 1G sparse-1g; printf data | dd of=sparse-1g bs=1 seek=536870912 conv=notrunc status=none
  echo attrs > xattrs; setfattr -n user.colour -v blue xattrs; setfattr -n user.empty xattrs
  cp /bin/true capped; setcap cap_net_raw+ep capped
  echo acl > acl; setfacl -m u:1000:rw,g:100:r acl; mkdir acl-dir; setfacl -d -m u:1000:rwx acl-dir
  touch "$(printf 'n%.0s' $(seq 1 255))"
  touch 'naïve — 日本語 ü'
  mkfifo fifo; mknod null-copy c 1 3; mknod loop-copy b 7 0
  ln -s /nowhere/at/all dangling
  chown 1000:100 hard-a; touch -d '2001-02-03 04:05:06.123456789' xattrs
done
"""


# What AWKWARD_SH makes in /srv/awkward (xfs) and /root/awkward (ext4)
AWKWARD_NAMES = ("hard-a", "hard-b", "sparse-1g", "xattrs", "capped", "acl", "acl-dir", "n" * 255,
                 "naïve — 日本語 ü", "fifo", "null-copy", "loop-copy", "dangling")  # fmt: skip


@dataclass(frozen=True)
class SourceMachine:
    disk: Path  # raw disk image, 6 GiB sparse
    root_tar: Path
    kernel_version: str  # of the source system itself


def recipe_key() -> str:
    text = "\n".join((BUILD_SH, EXTRACT_PY, AWKWARD_SH, " ".join(PACKAGES), repr(UUIDS), str(DISK_BYTES)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fill(text: str) -> str:
    for name, uuid in UUIDS.items():
        text = text.replace(f"@{name}@", uuid)
    return text.replace("@marker@", MARKER)


def root_tarball(cache: Path = CACHE) -> Path:
    """The mmdebstrap tarball, made once per package list."""
    key = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:16]
    tar = cache / f"root-{key}.tar"
    if not tar.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        argv = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES), "bookworm", str(partial)]
        run(argv, timeout=1200)
        partial.rename(tar)
    return tar


def _helper_disk(work: Path) -> Path:
    """A small ext4 image holding the scripts (mkfs.ext4 -d: no mount needed). The root
    tarball goes to the guest as a read-only drive of its own, read as a raw tar stream."""
    tree = work / "src"
    tree.mkdir(parents=True)
    (tree / "build.sh").write_text(_fill(BUILD_SH))
    (tree / "extract.py").write_text(EXTRACT_PY)
    (tree / "awkward.sh").write_text(AWKWARD_SH)
    image = work / "src.img"
    run(["mkfs.ext4", "-q", "-F", "-d", tree, image, "8M"], timeout=120)
    return image


def build_disk(vmlinuz: Path, rescue_initrd: Path, root_tar: Path, disk: Path, work: Path) -> list[str]:
    """Lay out and fill `disk` in a guest booted from our rescue image; the console lines."""
    helper = _helper_disk(work)
    with open(disk, "wb") as f:
        f.truncate(DISK_BYTES)
    devices = [
        "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-drive", f"file={helper},format=raw,if=virtio,readonly=on",
        "-drive", f"file={root_tar},format=raw,if=virtio,readonly=on",  # /dev/vdc
    ]  # fmt: skip
    # the quotes keep the console's echo of this line from matching `until`
    script = ("mkdir -p /src && mount -t ext4 -o ro /dev/vdb /src && sh /src/build.sh;"
              " echo SOURCE-'BUILD' rc=$?\n")  # fmt: skip
    result = qemu_boot.boot(
        vmlinuz, rescue_initrd, "console=ttyS0 expert media_timeout=1", devices, timeout=1500,
        until="SOURCE-BUILD rc=", replies=[qemu_boot.Reply("starting a shell (expert mode)", script)],
        memory_mb=1536,
    )  # fmt: skip
    lines = list(result.lines)
    if result.reason != "matched" or "SOURCE-BUILD rc=0" not in (result.matched_line or ""):
        raise AssertionError("building the source disk failed:\n" + "\n".join(lines[-60:]))
    helper.unlink()
    return lines


def boot_to_marker(disk: Path, devices: tuple[str, ...] = (), timeout: float = 300,
                   controller: tuple[str, ...] | None = None) -> qemu_boot.BootResult:  # fmt: skip
    """Boot a disk from SeaBIOS (a snapshot: the image is not changed) until MARKER; on
    virtio-blk, or on the `controller` devices given (which take the drive `d0`)."""
    drive = ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on"] if controller is None else \
        ["-drive", f"file={disk},format=raw,if=none,id=d0,snapshot=on", *controller]  # fmt: skip
    argv = qemu_boot.firmware_argv([*drive, *devices], memory_mb=1024)
    return qemu_boot.run_console(argv, timeout=timeout, until=MARKER)


def marker_words(result: qemu_boot.BootResult) -> list[str]:
    """The words of the marker line, from MARKER on."""
    line = next(line for line in result.lines if MARKER in line)
    return line[line.index(MARKER):].split()


def source_machine(vmlinuz: Path, rescue_initrd: Path, cache: Path = CACHE) -> SourceMachine:
    """The cached source machine, built (and booted once to its marker) if missing."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another suite on this machine builds it: wait for it
        return _built(vmlinuz, rescue_initrd, cache)


def _built(vmlinuz: Path, rescue_initrd: Path, cache: Path) -> SourceMachine:
    root_tar = root_tarball(cache)
    disk = cache / f"source-{recipe_key()}.img"
    if not disk.is_file():
        for stale in cache.glob("work-*"):  # an interrupted build, of this recipe or an older one
            shutil.rmtree(stale, ignore_errors=True)
        work = cache / f"work-{recipe_key()}"
        work.mkdir(parents=True)
        partial = work / "disk.partial.img"
        build_disk(vmlinuz, rescue_initrd, root_tar, partial, work)
        booted = boot_to_marker(partial)
        if booted.reason != "matched":
            tail = "\n".join(booted.lines[-60:])
            raise AssertionError(f"the source disk did not boot to its marker:\n{tail}")
        partial.rename(disk)
        shutil.rmtree(work, ignore_errors=True)
    listing = run(["tar", "-tf", root_tar]).stdout.decode()
    kernel = next(line.split("vmlinuz-", 1)[1] for line in listing.splitlines() if "boot/vmlinuz-" in line)
    return SourceMachine(disk, root_tar, kernel)
