"""Mounting a machine read-only from its disks (capture/mount_source.py): a real sparse GPT
disk image (BIOS boot, ext4 /boot, swap, ext4 root with a small Debian-like tree, xfs /srv),
attached read-only and mounted as its etc/fstab says; and the same logic on a fake runner.
The image builder is shared with test_capture_cli.py. Needs root (loop devices, mounts)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.collect import HostPaths, collect_layout
from initrd_composer.capture.mount_source import attach_images, mount_source, resolve_spec, ro_options
from initrd_composer.capture.session import read_mounts
from initrd_composer.runner import run

MIB = 1 << 20
GIB = 1 << 30
LONG_NAME = "n" * 255
UTF8_NAME = "é" * 127  # 254 bytes
TOOLS = ("sfdisk", "losetup", "partx", "mkfs.ext4", "mkfs.xfs", "mkswap", "setfacl", "setcap", "rsync")
BIOS, LINUX, SWAP = (
    "21686148-6449-6E6F-744E-656564454649",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
)
# (start, size in MiB, type, name); partition numbers 1..5
PARTS = [(1, 1, BIOS, "bios"), (2, 64, LINUX, "boot"), (66, 16, SWAP, "swap"), (82, 160, LINUX, "root"),
         (242, 320, LINUX, "srv")]  # fmt: skip
IMAGE_MIB = 600


@dataclass
class SourceImage:
    image: Path
    uuids: dict[str, str]
    bios_boot: bytes


def _sfdisk_script() -> str:
    lines = ["label: gpt"]
    for start, size, ptype, name in PARTS:
        lines.append(f'start={start * 2048}, size={size * 2048}, type={ptype}, name="{name}"')
    return "\n".join(lines) + "\n"


def fstab_text(uuids: dict[str, str]) -> str:
    return "\n".join([
        "# /etc/fstab: static file system information.",
        f"UUID={uuids['root']} /     ext4 errors=remount-ro 0 1",
        f"UUID={uuids['boot']} /boot ext4 defaults          0 2",
        f"/dev/disk/by-uuid/{uuids['srv']} /srv xfs defaults 0 2",
        f"UUID={uuids['swap']} none  swap sw                0 0",
        "tmpfs /tmp tmpfs defaults 0 0",
        "nas:/export /mnt/nas nfs defaults 0 0",
        "LABEL=usb-stick /media/usb ext4 noauto,user 0 0",
        "",
    ])  # fmt: skip


def fill_root(root: Path, uuids: dict[str, str]) -> None:
    """A small Debian-like root with every awkward kind of file."""
    dirs = ("etc/apt", "usr/bin", "usr/lib", "var/log", "var/cache/apt/archives", "home/user", "tmp", "boot",
            "srv", "proc", "sys", "dev", "root", "mnt")
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "etc" / "fstab").write_text(fstab_text(uuids))
    (root / "etc" / "hostname").write_text("source\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (root / "usr" / "bin" / "tool").write_bytes(os.urandom(200_000))
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    (root / "usr" / "bin" / "ping").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.chmod(root / "usr" / "bin" / "ping", 0o755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool-again")
    (root / "var" / "log" / "syslog").write_text("boot\n" * 1000)
    (root / "var" / "cache" / "apt" / "archives" / "big.deb").write_bytes(os.urandom(300_000))
    (root / "home" / "user" / "notes.tmp").write_text("scratch")
    (root / "home" / "user" / LONG_NAME).write_bytes(b"long")
    (root / "home" / "user" / UTF8_NAME).write_bytes(b"utf8")
    with open(os.fsencode(root / "home" / "user") + b"/latin1-\xe9", "wb") as f:
        f.write(b"not utf-8")
    os.chown(root / "home" / "user", 1000, 1000)
    os.chown(root / "home" / "user" / UTF8_NAME, 1000, 1000)
    os.symlink("../../nowhere", root / "home" / "user" / "dangling")
    os.symlink("/usr/bin/tool", root / "usr" / "bin" / "tool-link")
    os.mkfifo(root / "var" / "log" / "fifo", 0o620)
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(root / "var" / "sparse", "wb") as f:  # 1 GiB apparent, two small extents
        f.truncate(GIB)
        f.seek(MIB)
        f.write(b"first")
        f.seek(GIB - 4096)
        f.write(b"last")
    os.setxattr(root / "etc" / "hostname", "user.origin", b"captured")
    os.setxattr(root / "home" / "user" / LONG_NAME, "user.bin", bytes(range(256)))
    run(["setcap", "cap_net_raw+ep", root / "usr" / "bin" / "ping"])
    run(["setfacl", "-m", "u:1000:rwx,g:100:r", root / "var" / "log" / "syslog"])
    run(["setfacl", "-d", "-m", "g:55:rx", root / "home" / "user"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(root / "tmp" / "sock"))
    sock.close()
    os.utime(root / "etc" / "hostname", ns=(1, 1_234_567_890_123_456_789))


def fill_boot(boot: Path) -> None:
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text("set timeout=5\n")
    (boot / "vmlinuz-6.1.0-fake").write_bytes(os.urandom(400_000))
    os.link(boot / "vmlinuz-6.1.0-fake", boot / "vmlinuz")


def fill_srv(srv: Path) -> None:
    (srv / "data").mkdir()
    for i in range(20):
        (srv / "data" / f"file{i}.bin").write_bytes(os.urandom(20_000 + i))
    os.link(srv / "data" / "file0.bin", srv / "data" / "file0-link")
    (srv / "data" / "skip.tmp").write_text("excluded")
    run(["setfacl", "-m", "u:33:rw", srv / "data" / "file1.bin"])
    os.setxattr(srv / "data" / "file2.bin", "user.tag", b"xfs")
    os.symlink("file3.bin", srv / "data" / "link3")


def build_source_image(base: Path) -> SourceImage:
    """A sparse GPT disk image of a small machine, its filesystems filled, detached again."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install {missing} (util-linux, e2fsprogs, xfsprogs, acl, libcap2-bin, rsync)"
    run_id = uuid.uuid4().hex[:12]  # xfs refuses a second mounted filesystem with the same UUID
    prefixes = {"boot": "b0000000", "swap": "5a000000", "root": "70000000", "srv": "50000000"}
    uuids = {k: f"{n}-0000-4000-8000-{run_id}" for k, n in prefixes.items()}
    image = base / "disk.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB * MIB)
    run(["sfdisk", "-q", image], input_bytes=_sfdisk_script().encode())
    bios_boot = os.urandom(4096)
    with open(image, "r+b") as f:
        f.seek(MIB)
        f.write(bios_boot)
    loop = run(["losetup", "-f", "--show", image]).stdout.decode().strip()
    build = base / "build"
    mounted: list[Path] = []
    try:
        run(["partx", "-a", loop])
        run(["mkfs.ext4", "-q", "-F", "-L", "boot", "-U", uuids["boot"], f"{loop}p2"])
        run(["mkswap", "-U", uuids["swap"], f"{loop}p3"])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", uuids["root"], f"{loop}p4"])
        run(["mkfs.xfs", "-q", "-f", "-L", "srv", "-m", f"uuid={uuids['srv']}", f"{loop}p5"])
        build.mkdir()
        for part, where in ((4, build), (2, build / "boot"), (5, build / "srv")):
            if where is build:
                run(["mount", f"{loop}p{part}", where])
                fill_root(build, uuids)
            else:
                run(["mount", f"{loop}p{part}", where])
            mounted.append(where)
        fill_boot(build / "boot")
        fill_srv(build / "srv")
    finally:
        for where in reversed(mounted):
            run(["umount", where])
        run(["partx", "-d", loop], check=False)
        run(["losetup", "-d", loop])
    return SourceImage(image, uuids, bios_boot)


@pytest.fixture(scope="module")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    assert os.geteuid() == 0, "these tests attach loop devices and mount: run them as root"
    return build_source_image(tmp_path_factory.mktemp("source-image"))


@pytest.fixture
def attached(source_image: SourceImage) -> Iterator[tuple[list[str], dict[str, Any]]]:
    with attach_images([source_image.image]) as devices:
        yield devices, collect_layout(devices, paths=HostPaths())


def _mounts_under(path: Path) -> list[dict[str, str]]:
    inside = f"{path}/"
    return [m for m in read_mounts() if m["mountpoint"] == str(path) or m["mountpoint"].startswith(inside)]


def _options(mountpoint: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        words = line.split()
        if words[4] == str(mountpoint):
            return words[5].split(",") + line.partition(" - ")[2].split()[2].split(",")
    raise AssertionError(f"{mountpoint} is not mounted")


@pytest.mark.root
def test_mounts_the_machine_read_only_as_its_fstab_says(
    source_image: SourceImage, attached: tuple[list[str], dict[str, Any]], tmp_path: Path
) -> None:
    (loop,), layout = attached
    assert Path(f"/sys/block/{Path(loop).name}/ro").read_text().strip() == "1"  # losetup -r
    with mount_source(layout, tmp_path) as source:
        assert source.root == tmp_path
        got = [(m.device, m.type, m.mountpoint) for m in source.mounts]
        assert got == [(f"{loop}p4", "ext4", "/"), (f"{loop}p2", "ext4", "/boot"),
                       (f"{loop}p5", "xfs", "/srv")]  # fmt: skip
        assert (tmp_path / "etc" / "hostname").read_text() == "source\n"
        assert (tmp_path / "boot" / "grub" / "grub.cfg").is_file()
        assert (tmp_path / "srv" / "data" / "file0.bin").is_file()
        assert {"ro", "norecovery"} <= set(_options(tmp_path))  # ext4 shows noload so
        assert "norecovery" in _options(tmp_path / "srv")
        with pytest.raises(OSError, match="Read-only"):
            (tmp_path / "new").write_text("x")
        assert source.skipped == (
            f"UUID={source_image.uuids['swap']} none: swap", "tmpfs /tmp: tmpfs: not a disk filesystem",
            "nas:/export /mnt/nas: nfs: not a disk filesystem", "LABEL=usb-stick /media/usb: noauto",
        )
    assert _mounts_under(tmp_path) == []


@pytest.mark.root
def test_everything_is_unmounted_after_an_error(
    attached: tuple[list[str], dict[str, Any]], tmp_path: Path
) -> None:
    _devices, layout = attached
    with pytest.raises(RuntimeError, match="boom"), mount_source(layout, tmp_path) as source:
        assert len(source.mounts) == 3
        raise RuntimeError("boom")
    assert _mounts_under(tmp_path) == []


@pytest.mark.root
def test_a_filesystem_not_on_the_disks_is_refused(
    attached: tuple[list[str], dict[str, Any]], tmp_path: Path
) -> None:
    """Only the root disk's filesystems are in the layout: /boot and /srv cannot be found."""
    _devices, layout = attached
    partial = {**layout, "filesystems": [fs for fs in layout["filesystems"] if fs["label"] == "root"]}
    with pytest.raises(CaptureError, match=r"etc/fstab names UUID=.* for /boot, on none of the disks") as exc:
        with mount_source(partial, tmp_path):
            pass
    assert "every disk" in exc.value.hint
    assert _mounts_under(tmp_path) == []


@pytest.mark.root
def test_no_root_filesystem(attached: tuple[list[str], dict[str, Any]], tmp_path: Path) -> None:
    _devices, layout = attached
    no_root = {**layout, "filesystems": [fs for fs in layout["filesystems"] if fs["label"] != "root"]}
    with pytest.raises(CaptureError, match="no root filesystem found") as exc:
        with mount_source(no_root, tmp_path):
            pass
    assert "no etc/fstab" in exc.value.hint
    assert _mounts_under(tmp_path) == []


# -- the same logic on a fake runner: every command it would run ----------------------------


def _layout(*fss: dict[str, Any]) -> dict[str, Any]:
    keys = {"uuid": None, "label": None, "partuuid": None, "partlabel": None}
    return {"filesystems": [{**keys, **fs} for fs in fss]}


class FakeMounts:
    """mount/umount on fake trees: mounting a device copies `trees[device]` onto the target
    (what its files would look like there); every command is recorded."""

    def __init__(self, trees: dict[str, Path], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.trees = trees
        self.fail = fail
        self.calls: list[list[str]] = []
        self.on: dict[str, str] = {}

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[0] == "mount":
            device, target = argv[-2], argv[-1]
            if device in self.fail:
                raise CaptureError(f"command failed: mount {device}: wrong fs type")
            assert target not in self.on, f"{target} mounted twice"
            shutil.copytree(self.trees[device], target, dirs_exist_ok=True, symlinks=True)
            self.on[target] = device
        elif argv[0] == "umount":
            target = argv[-1]
            assert target in self.on, f"{target} not mounted"
            del self.on[target]
        return ""


def _tree(base: Path, name: str, files: dict[str, str]) -> Path:
    root = base / name
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            os.symlink(text[2:], root / rel)
        else:
            (root / rel).write_text(text)
    return root


def test_specs_resolve_through_the_layout() -> None:
    layout = _layout(
        {"device": "/dev/sda1", "type": "vfat", "uuid": "ABCD-1234", "partuuid": "aa-01",
         "partlabel": "EFI System"},
        {"device": "/dev/vg0/root", "type": "ext4", "label": "my root"},
    )
    assert resolve_spec("UUID=abcd-1234", layout)["device"] == "/dev/sda1"  # type: ignore[index]
    assert resolve_spec("/dev/disk/by-partlabel/EFI\\x20System", layout)["device"] == "/dev/sda1"  # type: ignore[index]
    assert resolve_spec("PARTUUID=AA-01", layout)["device"] == "/dev/sda1"  # type: ignore[index]
    assert resolve_spec("/dev/mapper/vg0-root", layout)["device"] == "/dev/vg0/root"  # type: ignore[index]
    assert resolve_spec("LABEL=my root", layout)["device"] == "/dev/vg0/root"  # type: ignore[index]
    assert resolve_spec("LABEL=other", layout) is None and resolve_spec("/dev/sdz9", layout) is None
    assert ro_options("ext4") == "ro,noload" and ro_options("xfs") == "ro,norecovery,nouuid"
    assert ro_options("btrfs", ["subvol=@"]) == "ro,rescue=nologreplay,subvol=@"
    assert ro_options("vfat") == "ro"


def test_fake_machine_parents_first_nofail_and_symlinked_mount_points(tmp_path: Path) -> None:
    fstab = "\n".join([
        "UUID=r / ext4 defaults 0 1",
        "UUID=e /boot/efi vfat umask=0077 0 1",
        "UUID=b /boot ext4 defaults 0 2",
        "UUID=h /home xfs defaults 0 2",  # /home is a symlink to /srv/home in the machine
        "UUID=gone /backup ext4 defaults,nofail 0 2",
        "/srv/x /mnt/x none bind 0 0",
        "",
    ])  # fmt: skip
    trees = {
        "/dev/b1": _tree(tmp_path, "boot", {"efi/.keep": "", "vmlinuz": "k"}),
        "/dev/r1": _tree(tmp_path, "root", {
            "etc/fstab": fstab, "boot/.keep": "", "home": "->/srv/home", "srv/home/.keep": "",
            "backup/.keep": "",
        }),
        "/dev/e1": _tree(tmp_path, "esp", {"EFI/x.efi": ""}),
        "/dev/h1": _tree(tmp_path, "home", {"user/.profile": ""}),
        "/dev/x1": _tree(tmp_path, "xfs-no-fstab", {"data": ""}),
    }
    layout = _layout(
        {"device": "/dev/x1", "type": "xfs"}, {"device": "/dev/b1", "type": "ext4", "uuid": "b"},
        {"device": "/dev/r1", "type": "ext4", "uuid": "r"},
        {"device": "/dev/e1", "type": "vfat", "uuid": "e"},
        {"device": "/dev/h1", "type": "xfs", "uuid": "h"}, {"device": "/dev/s1", "type": "swap", "uuid": "s"},
    )
    fake = FakeMounts(trees)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with mount_source(layout, scratch, runner=fake) as source:
        assert [(m.device, m.mountpoint, m.path) for m in source.mounts] == [
            ("/dev/r1", "/", scratch), ("/dev/b1", "/boot", scratch / "boot"),
            ("/dev/h1", "/home", scratch / "srv" / "home"),
            ("/dev/e1", "/boot/efi", scratch / "boot" / "efi"),
        ]  # fmt: skip
        assert source.skipped == ("UUID=gone /backup: nofail, on none of the disks",
                                  "/srv/x /mnt/x: bind mount")  # fmt: skip
    mounts = [c for c in fake.calls if c[0] == "mount"]
    # The xfs without etc/fstab was tried as the root first, and unmounted again.
    assert mounts[0][-2:] == ["/dev/x1", str(scratch)] and mounts[0][4] == "ro,norecovery,nouuid"
    assert [c[-1] for c in fake.calls if c[0] == "umount"] == [
        str(scratch), str(scratch), str(scratch / "boot" / "efi"), str(scratch / "srv" / "home"),
        str(scratch / "boot"), str(scratch),
    ]  # fmt: skip
    assert fake.on == {}


def test_a_failed_mount_unmounts_what_was_mounted(tmp_path: Path) -> None:
    fstab = "UUID=r / ext4 defaults\nUUID=b /boot ext4 defaults\n"
    trees = {"/dev/r1": _tree(tmp_path, "root", {"etc/fstab": fstab, "boot/.keep": ""})}
    layout = _layout({"device": "/dev/r1", "type": "ext4", "uuid": "r"},
                     {"device": "/dev/b1", "type": "ext4", "uuid": "b"})  # fmt: skip
    fake = FakeMounts(trees, fail={"/dev/b1"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(CaptureError, match="mount /dev/b1"), mount_source(layout, scratch, runner=fake):
        pass
    assert fake.on == {}


def test_btrfs_root_in_a_subvolume(tmp_path: Path) -> None:
    fstab = "UUID=r / btrfs subvol=@ 0 0\nUUID=r /home btrfs subvol=@home 0 0\n"
    trees = {"/dev/r1": _tree(tmp_path, "top", {"@/etc/fstab": fstab, "@/home/.keep": "", "@home/u": ""})}
    fake = FakeMounts(trees)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    layout = _layout({"device": "/dev/r1", "type": "btrfs", "uuid": "r"})

    def subvol_aware(argv: list[str]) -> str:
        if argv[0] == "mount" and "subvol=@" in argv[4].split(","):
            shutil.rmtree(scratch)
            scratch.mkdir()
            shutil.copytree(trees["/dev/r1"] / "@", scratch, dirs_exist_ok=True)
            fake.calls.append(argv)
            fake.on[argv[-1]] = argv[-2]
            return ""
        if argv[0] == "mount" and "subvol=@home" in argv[4]:
            fake.calls.append(argv)
            fake.on[argv[-1]] = argv[-2]
            return ""
        return fake(argv)

    with mount_source(layout, scratch, runner=subvol_aware) as source:
        assert [(m.mountpoint, m.path) for m in source.mounts] == [("/", scratch),
                                                                   ("/home", scratch / "home")]  # fmt: skip
    opts = [c[4] for c in fake.calls if c[0] == "mount"]
    base = "ro,rescue=nologreplay"
    assert opts == [base, f"{base},subvol=@", f"{base},subvol=@home"]
