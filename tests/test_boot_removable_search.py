"""The removable-media finder on a fake /sys and /dev: real filesystem images (xorriso,
mkfs.fat, mke2fs, mkudffs) as the device nodes, a recording mount that lays the image's
source tree at the mount point. The order devices are looked at, why each one is refused,
waiting for late devices, and that nothing stays mounted. The real boots are in
test_boot_removable.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot import syscalls
from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.commands import CommandResult
from initrd_composer.boot.early import MODPROBE_HELPER
from initrd_composer.boot.sources import Choice, MediaContext, SourceError, removable
from initrd_composer.boot.sources.fs_label import identify
from initrd_composer.boot.sources.marker import MARKER_PATH
from initrd_composer.boot.sources.removable import block_devices, find, read_filesystem, search
from initrd_composer.runner import run
from tests.fake_clock import FakeClock

PCI = "devices/pci0000:00"
IDE = f"{PCI}/0000:00:01.1"
CD0 = f"{IDE}/ata1/host0/target0:0:0/0:0:0:0"
CD1 = f"{IDE}/ata2/host1/target1:0:0/1:0:0:0"
SATA = f"{PCI}/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0"
USB = f"{PCI}/0000:00:04.0/usb2/2-1/2-1:1.0/host3/target3:0:0/3:0:0:0"
CARD = f"{PCI}/0000:00:05.0/host4/target4:0:0/4:0:0:0"  # a card reader: removable, not USB
NVME = f"{PCI}/0000:00:06.0/nvme/nvme0"



class Machine:
    """/sys/class/block, /dev, the trees the images hold, and a mount table."""

    def __init__(self, tmp: Path) -> None:
        self.sys, self.dev, self.media, self.work = tmp / "sys", tmp / "dev", tmp / "media", tmp / "work"
        for d in (self.sys, self.dev, self.work):
            d.mkdir()
        self.trees: dict[str, Path] = {}  # device node -> the tree its filesystem holds
        self.mounted: dict[str, str] = {}  # mount point -> device node
        self.calls: list[tuple[str, str, str, int, str]] = []
        self.umounts: list[str] = []
        self.loads: list[str] = []  # modaliases the finder asked modprobe for

    def _dir(self, rel: str, **files: str) -> Path:
        path = self.sys / rel
        path.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (path / name).write_text(text + "\n")
        return path

    def _link(self, rel: str, target: Path) -> None:
        path = self.sys / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(target, path.parent))

    def disk(self, name: str, parent: str | None, image: Path | None, *, scsi_type: str = "0",
             removable: str = "0", size: int | None = None, tree: Path | None = None) -> Path:  # fmt: skip
        """A whole disk (or sr) whose node holds `image` (None: no node, as before devtmpfs)."""
        if parent is None:
            path = self._dir(f"devices/virtual/block/{name}")
        else:
            self._dir(parent, type=scsi_type)
            path = self._dir(f"{parent}/block/{name}", removable=removable)
            self._link(str(path.relative_to(self.sys)) + "/device", self.sys / parent)
        sectors = size if size is not None else (image.stat().st_size // 512 if image else 0)
        (path / "size").write_text(f"{sectors}\n")
        (path / "uevent").write_text(f"MAJOR=8\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n")
        self._link(f"class/block/{name}", path)
        self._node(name, image, tree)
        return path

    def partition(self, name: str, disk: Path, number: int, image: Path | None,
                  tree: Path | None = None) -> None:  # fmt: skip
        path = disk / name
        path.mkdir()
        (path / "partition").write_text(f"{number}\n")
        (path / "size").write_text(f"{image.stat().st_size // 512 if image else 0}\n")
        self._link(f"class/block/{name}", path)
        self._node(name, image, tree)

    def _node(self, name: str, image: Path | None, tree: Path | None) -> None:
        if image is not None:
            shutil.copyfile(image, self.dev / name)
        if tree is not None:
            self.trees[str(self.dev / name)] = tree

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        self.calls.append((source, target, fstype, flags, data))
        if source not in self.trees:
            raise OSError(22, "Invalid argument")
        shutil.copytree(self.trees[source], target, dirs_exist_ok=True)
        self.mounted[target] = source

    def umount(self, target: str) -> None:
        self.umounts.append(target)
        del self.mounted[target]
        for entry in os.listdir(target):  # the mount point is empty again
            path = os.path.join(target, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)

    def load(self, modalias: str) -> str:
        self.loads.append(modalias)
        return "" if modalias.startswith("usb:") else "modprobe: module not found"

    def bus_device(self, bus: str, name: str, modalias: str, driver: str = "", **files: str) -> None:
        path = self._dir(f"bus/{bus}/devices/{name}", modalias=modalias, **files)
        if driver:
            target = self.sys / "bus" / bus / "drivers" / driver
            target.mkdir(parents=True, exist_ok=True)
            (path / "driver").symlink_to(target)

    def ctx(self, clock: FakeClock, timeout_s: float = 5.0) -> MediaContext:
        return MediaContext(cfg=BootConfig(), timeout_s=timeout_s, media_root=str(self.media),
                            sys_root=str(self.sys), dev_root=str(self.dev), log=lambda _: None,
                            sleep=clock.sleep, clock=clock)  # fmt: skip

    def search(self, clock: FakeClock, timeout_s: float = 5.0) -> Any:
        return search(self.ctx(clock, timeout_s), mount=self.mount, umount=self.umount, load=self.load)

    def nothing_left(self) -> None:
        assert self.mounted == {}
        assert not self.media.exists() or os.listdir(self.media) == []


def marker(volume_id: str = "RESCUE", **changes: Any) -> str:
    doc: dict[str, Any] = {"format": "initrd-composer-medium", "version": 1, "volume_id": volume_id,
                           "kernel": "6.1.0-57-amd64", "initrd_sha256": "0" * 64, "data": "data"}  # fmt: skip
    doc.update(changes)
    return json.dumps(doc, sort_keys=True)


def tree(base: Path, name: str, marker_text: str | None, data: bool = True) -> Path:
    root = base / name
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz").write_bytes(b"k" * 100)
    if data:
        (root / "data").mkdir()
        (root / "data/restore-marker.txt").write_text(f"{name}\n")
        (root / "data/backup.tar").write_bytes(b"t" * 1000)
    if marker_text is not None:
        (root / ".initrd-composer").mkdir()
        (root / MARKER_PATH).write_text(marker_text)
    return root


def iso(base: Path, root: Path, label: str = "RESCUE") -> Path:
    out = base / f"{root.name}.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-r", "-J", "-o", out, root])
    return out


def fat(base: Path, root: Path, label: str) -> Path:
    out = base / f"{root.name}.fat"
    run(["mkfs.fat", "-C", "-n", label, out, "4096"])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mcopy", "-s", "-i", out, *[str(p) for p in sorted(root.iterdir())], "::/"], env=env)
    return out


def ext4(base: Path, root: Path, label: str) -> Path:
    out = base / f"{root.name}.ext4"
    with out.open("wb") as f:
        f.truncate(8 * 2**20)
    run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", root, out])
    return out


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_order_cdroms_then_usb_and_removable_then_disks_whole_before_parts(machine: Machine) -> None:
    m = machine
    m.disk("sr1", CD1, None, scsi_type="5")
    m.disk("sr0", CD0, None, scsi_type="5")
    sda = m.disk("sda", SATA, None, size=2048)
    m.partition("sda2", sda, 2, None)
    m.partition("sda1", sda, 1, None)
    sdb = m.disk("sdb", USB, None, size=2048)
    m.partition("sdb1", sdb, 1, None)
    m.disk("sdc", CARD, None, removable="1", size=2048)
    m.disk("nvme0n1", NVME, None, size=2048)
    m.disk("sdaa", SATA.replace("2:0:0:0", "2:0:1:0"), None, size=2048)
    m.disk("loop0", None, None, size=2048)  # virtual: never looked at
    m.disk("fd0", f"{PCI}/00:0a/fd0", None, size=2880)  # a floppy: never looked at
    order = [(d.name, d.kind, d.node) for d in block_devices(str(m.sys), str(m.dev))]
    assert [(name, kind) for name, kind, _ in order] == [
        ("sr0", "cdrom"), ("sr1", "cdrom"),
        ("sdb", "usb"), ("sdb1", "usb"), ("sdc", "usb"),
        ("sda", "disk"), ("sda1", "disk"), ("sda2", "disk"), ("sdaa", "disk"), ("nvme0n1", "disk"),
    ]  # fmt: skip
    assert order[0][2] == str(m.dev / "sr0")


def test_decoy_with_the_same_label_is_passed_over(machine: Machine, tmp_path: Path) -> None:
    m = machine
    decoy = tree(m.work, "decoy", None)
    ours = tree(m.work, "ours", marker())
    m.disk("sr0", CD0, iso(m.work, decoy), scsi_type="5", tree=decoy)
    m.disk("sr1", CD1, iso(m.work, ours), scsi_type="5", tree=ours)
    clock = FakeClock()
    found = m.search(clock)
    assert (found.kind, found.source) == ("cdrom", str(m.dev / "sr1"))
    assert found.path == str(m.media / "cdrom1" / "data") and found.mounts == (str(m.media / "cdrom1"),)
    assert found.data["listing"] == ["backup.tar", "restore-marker.txt"]
    assert (found.data["volume_id"], found.data["fstype"]) == ("RESCUE", "iso9660")
    assert found.data["marker"] == json.loads(marker())
    first, last = found.data["candidates"]
    assert first == {"device": str(m.dev / "sr0"), "kind": "cdrom", "size_bytes": first["size_bytes"],
                     "fstype": "iso9660", "label": "RESCUE", "refused": f"no /{MARKER_PATH}"}  # fmt: skip
    assert last["device"] == str(m.dev / "sr1") and last["refused"] is None
    # the decoy was mounted read-only, then unmounted; ours stays mounted
    ro = syscalls.MS_RDONLY
    assert [(c[0], c[2], c[3] & ro) for c in m.calls] == [
        (str(m.dev / "sr0"), "iso9660", ro), (str(m.dev / "sr1"), "iso9660", ro)
    ]  # fmt: skip
    assert m.umounts == [str(m.media / "cdrom0")] and list(m.mounted) == [str(m.media / "cdrom1")]
    assert not (m.media / "cdrom0").exists()
    assert clock.slept == []  # found on the first look


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        (marker(format="something-else"), "has format 'something-else', not 'initrd-composer-medium'"),
        (marker(version=2), "has version 2; this image reads version 1"),
        (marker(version=True), "has version True"),
        (marker("BACKUP"), "is for volume 'BACKUP' but this one is labelled 'RESCUE'"),
        (marker(data="../etc"), "names a bad data directory '../etc'"),
        (marker(data="restore"), "names the data directory /restore, which is missing"),
    ],
)
def test_a_marker_not_ours_is_refused_and_unmounted(machine: Machine, text: str, why: str) -> None:
    m = machine
    root = tree(m.work, "bad", text)
    m.disk("sr0", CD0, iso(m.work, root), scsi_type="5", tree=root)
    clock = FakeClock()
    with pytest.raises(SourceError) as caught:
        m.search(clock, timeout_s=2)
    err = caught.value
    assert err.reason == "no-marker", err.message
    assert f"{m.dev}/sr0 iso9660 'RESCUE': /{MARKER_PATH} {why}" in err.message
    assert "nfsmount=" in err.hint
    assert len(m.calls) == 1  # refused for what is on it: not mounted again while waiting
    assert clock.now >= 2 and max(clock.slept) <= 0.5
    m.nothing_left()


def test_nothing_there_is_no_medium_and_names_what_was_seen(machine: Machine) -> None:
    m = machine
    empty = m.work / "empty"
    empty.touch()
    m.disk("sr0", CD0, empty, scsi_type="5")  # an empty drive: size 0, nothing to read
    m.disk("sdb", USB, None, size=0)  # a card reader slot without a card
    m.disk("sdc", CARD, None, removable="1", size=2048)  # its node not made yet
    with pytest.raises(SourceError) as caught:
        m.search(FakeClock(), timeout_s=3)
    assert caught.value.reason == "no-medium"
    for seen in ("sr0: no medium", "sdb: no medium", "sdc: no device node yet"):
        assert f"{m.dev}/{seen}" in caught.value.message
    assert "in 3 s" in caught.value.message
    m.nothing_left()
    bare = m.work / "bare"
    bare.mkdir()
    with pytest.raises(SourceError) as none:
        Machine(bare).search(FakeClock(), timeout_s=1)
    assert none.value.reason == "no-medium" and "no block device" in none.value.message


def test_a_usb_stick_that_appears_late_is_waited_for(machine: Machine) -> None:
    m = machine
    decoy = tree(m.work, "decoy", None)
    ours = tree(m.work, "ours", marker())
    empty = m.work / "empty"
    empty.touch()
    m.disk("sr0", CD0, empty, scsi_type="5")  # an empty drive: looked at again each round
    m.disk("sr1", CD1, iso(m.work, decoy), scsi_type="5", tree=decoy)
    stick = iso(m.work, ours)
    clock = FakeClock()

    def plug(polls: int) -> None:
        if polls == 3:  # the kernel scanned the stick after delay_use
            m.disk("sda", USB, stick, tree=ours)

    clock.on_sleep.append(plug)
    found = m.search(clock, timeout_s=10)
    assert (found.kind, found.source, found.path) == ("usb", str(m.dev / "sda"), str(m.media / "usb0/data"))
    assert len(clock.slept) == 3 and clock.now == 1.5
    assert [c[0] for c in m.calls] == [str(m.dev / "sr1"), str(m.dev / "sda")]  # the decoy once
    # candidates in the order first seen, each with its last look
    assert [(c["device"], c["refused"]) for c in found.data["candidates"]] == [
        (str(m.dev / "sr0"), "no medium"), (str(m.dev / "sr1"), f"no /{MARKER_PATH}"),
        (str(m.dev / "sda"), None),
    ]  # fmt: skip


def test_drivers_for_late_usb_and_scsi_media_are_loaded_once(machine: Machine) -> None:
    m = machine
    stick = "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"
    m.bus_device("usb", "2-1", "usb:v46F4p0001d0000dc00dsc00dp00ic00isc00ip00in00")  # the device
    m.bus_device("usb", "2-1:1.0", stick)  # its mass-storage interface: no driver yet
    m.bus_device("usb", "1-0:1.0", "usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip00in00", driver="hub")
    m.bus_device("usb", "3-1:1.0", "usb:v0627p0001d0000dc00dsc00dp00ic03isc00ip00in00")  # a keyboard
    m.bus_device("scsi", "0:0:0:0", "scsi:t-0x05", driver="sr", type="5")  # bound already
    m.bus_device("scsi", "3:0:0:0", "scsi:t-0x00", type="0")  # a disk sd_mod has not taken
    m.bus_device("scsi", "4:0:0:0", "scsi:t-0x01", type="1")  # a tape: not for this finder
    ours = tree(m.work, "ours", marker())
    image = iso(m.work, ours)
    clock = FakeClock()
    clock.on_sleep.append(lambda polls: m.disk("sda", USB, image, tree=ours) if polls == 2 else None)
    found = m.search(clock)
    assert found.source == str(m.dev / "sda")
    assert m.loads == [stick, "scsi:t-0x00"]  # each once, though looked for every round
    assert found.data["late_drivers"] == {stick: "", "scsi:t-0x00": "modprobe: module not found"}


def test_modprobe_asks_what_a_modalias_needs_and_keeps_denied_modules_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[tuple[str, ...]] = []
    shown = ("insmod /lib/modules/6.1.0-57-amd64/kernel/drivers/cdrom/cdrom.ko\n"
             "insmod /lib/modules/6.1.0-57-amd64/kernel/drivers/scsi/sr_mod.ko \n")  # fmt: skip

    def fake(argv: Any, **_: Any) -> CommandResult:
        ran.append(tuple(argv))
        if argv[-1] == "scsi:t-0x09":
            return CommandResult(tuple(argv), 1, "modprobe: module scsi:t-0x09 not found in modules.dep\n")
        return CommandResult(tuple(argv), 0, shown if "-D" in argv else "")

    monkeypatch.setattr(removable, "run_command", fake)
    assert removable.modprobe("scsi:t-0x05", deny=("sr_mod",)) == "not loaded: denymods= names sr_mod"
    assert ran == [(MODPROBE_HELPER, "-D", "scsi:t-0x05")]  # never loaded
    assert removable.modprobe("scsi:t-0x05", deny=("e1000",)) == ""
    assert ran[-1] == (MODPROBE_HELPER, "-q", "scsi:t-0x05")
    assert "not found in modules.dep" in removable.modprobe("scsi:t-0x09")


def test_an_isohybrid_stick_is_found_as_the_disk_not_its_partition(machine: Machine) -> None:
    m = machine
    ours = tree(m.work, "ours", marker())
    image = iso(m.work, ours)
    sda = m.disk("sda", USB, image, tree=ours)
    m.partition("sda1", sda, 1, image, tree=ours)
    found = m.search(FakeClock())
    assert found.source == str(m.dev / "sda")
    assert [c[0] for c in m.calls] == [str(m.dev / "sda")]


def test_partitions_after_a_partition_table_and_a_sata_disk_is_kind_disk(machine: Machine) -> None:
    m = machine
    ours = tree(m.work, "ours", marker("rescue-ext"))
    table = m.work / "mbr.img"
    with table.open("wb") as f:
        f.truncate((2048 + 16384) * 512)
    run(["sfdisk", "-q", table], input_bytes=b"label: dos\nstart=2048, size=16384, type=83\n")
    sda = m.disk("sda", SATA, table)
    m.partition("sda1", sda, 1, ext4(m.work, ours, "rescue-ext"), tree=ours)
    found = m.search(FakeClock())
    assert (found.kind, found.source, found.data["fstype"]) == ("disk", str(m.dev / "sda1"), "ext4")
    assert found.data["candidates"][0]["refused"].startswith("no filesystem this image reads")
    assert [(c[0], c[2], c[4]) for c in m.calls] == [(str(m.dev / "sda1"), "ext4", "noload")]


def test_fat_stick_label_is_compared_without_case(machine: Machine) -> None:
    m = machine
    ours = tree(m.work, "ours", marker("Rescue"))
    m.disk("sdb", USB, fat(m.work, ours, "RESCUE"), tree=ours)
    found = m.search(FakeClock())
    assert (found.kind, found.data["fstype"], found.data["volume_id"]) == ("usb", "vfat", "RESCUE")


def test_a_medium_without_data_is_found_at_its_root(machine: Machine) -> None:
    m = machine
    ours = tree(m.work, "ours", marker(data=None), data=False)
    m.disk("sr0", CD0, iso(m.work, ours), scsi_type="5", tree=ours)
    found = m.search(FakeClock())
    assert found.path == str(m.media / "cdrom0")
    assert found.data["listing"] == [".initrd-composer", "boot"]


def test_a_failed_mount_is_a_refusal_and_leaves_no_directory(machine: Machine) -> None:
    m = machine
    root = tree(m.work, "ours", marker())
    m.disk("sr0", CD0, iso(m.work, root), scsi_type="5")  # no tree: the fake mount says EINVAL
    with pytest.raises(SourceError) as caught:
        m.search(FakeClock(), timeout_s=1)
    assert caught.value.reason == "no-marker"
    assert "cannot mount iso9660: Invalid argument" in caught.value.message
    m.nothing_left()


def test_find_takes_only_the_removable_choice(machine: Machine) -> None:
    with pytest.raises(SourceError) as caught:
        find(machine.ctx(FakeClock()), Choice("nfs", "a:/b"))
    assert caught.value.reason == "bad-spec"


def test_labels_read_from_real_filesystems(tmp_path: Path) -> None:
    found = read_filesystem(str(iso(tmp_path, tree(tmp_path, "t", None), "Mixed-Case_1")))
    assert found is not None and (found.fstype, found.label) == ("iso9660", "Mixed-Case_1")
    fat32 = tmp_path / "f32.img"
    run(["mkfs.fat", "-F", "32", "-C", "-n", "BIG32", fat32, "40000"])
    ext2 = tmp_path / "e2.img"
    with ext2.open("wb") as f:
        f.truncate(4 * 2**20)
    run(["mke2fs", "-q", "-t", "ext2", "-L", "old", ext2])
    udf = {}
    for block in (512, 2048):
        path = tmp_path / f"udf{block}.img"
        with path.open("wb") as f:
            f.truncate(20 * 2**20)
        run(["mkudffs", "-b", str(block), f"--label=UDF{block}", path])
        udf[block] = read_filesystem(str(path))
    big = read_filesystem(str(fat32))
    assert big is not None and (big.fstype, big.label) == ("vfat", "BIG32")
    e2 = read_filesystem(str(ext2))
    assert e2 is not None and (e2.fstype, e2.variant, e2.label) == ("ext4", "ext2", "old")
    assert {b: (i.fstype, i.label) if i else None for b, i in udf.items()} == {
        512: ("udf", "UDF512"), 2048: ("udf", "UDF2048")
    }
    zeros = bytes(1 << 20)
    assert identify(lambda off, size: zeros[off : off + size]) is None
