"""The tape source without QEMU: a fake sysfs/dev tree, tapes in the drive model of
tests/test_tape.py (it decodes the real mtio structs and keeps st's record semantics), a fake
SG device for the OBDR switch and a rescan hook that plays the kernel. The real st driver,
tgt's drive and sg_wr_mode's bytes are in tests/test_boot_tape.py."""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.scsi_generic import SgResult, decode_sense
from initrd_composer.boot.sources import Choice, MediaContext, SourceError
from initrd_composer.boot.sources.tape_devices import ScsiDevice, TapeHooks, scsi_devices, tape_nodes
from initrd_composer.boot.sources.tape_source import find_tape
from initrd_composer.boot.tape import DeviceTape, ObdrLabel, obdr_header
from tests.test_tape import DriveModel, Record

DATA = bytes(range(256)) * 1000  # 256000 bytes: padded to 4 x 65536
HP_CDROM = ("HP", "Ultrium 3-SCSI", 5)


def obdr_tape(
    data: bytes = DATA, *, label_bytes: int | None = None, header: bytes | None = None
) -> DriveModel:
    """A drive holding an OBDR tape as `compose-initrd obdr` writes it."""
    model = DriveModel()
    tape = DeviceTape("/dev/nst0", write=True, syscalls=model)
    iso = b"\x01" * 2048 * 3
    label = ObdrLabel(len(iso), len(data) if label_bytes is None else label_bytes, 65536)
    for size, payload in ((512, header if header is not None else obdr_header(label)), (2048, iso),
                          (65536, data.ljust(-(-len(data) // 65536) * 65536, b"\0"))):
        tape.set_block_size(size)
        tape.write_block(payload)
        tape.write_filemark()
    tape.rewind()
    tape.close()
    model.ops.clear()
    return model


def padded_sha(data: bytes = DATA) -> str:
    return hashlib.sha256(data.ljust(-(-len(data) // 65536) * 65536, b"\0")).hexdigest()


class Drives:
    """TapeSyscalls over several drive models, by node name (one open at a time, as st)."""

    def __init__(self, models: dict[str, DriveModel], fail_open: dict[str, int] | None = None) -> None:
        self.models, self.fail_open = models, fail_open or {}
        self.current: DriveModel | None = None

    def open(self, path: str, flags: int) -> int:
        name = os.path.basename(path)
        if name in self.fail_open:
            raise OSError(self.fail_open[name], os.strerror(self.fail_open[name]))
        self.current = self.models[name]
        return self.current.open(path, flags)

    def close(self, fd: int) -> None:
        assert self.current is not None
        self.current.close(fd)

    def read(self, fd: int, size: int) -> bytes:
        assert self.current is not None
        return self.current.read(fd, size)

    def write(self, fd: int, data: bytes) -> int:
        raise AssertionError("the tape source never writes")

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        assert self.current is not None
        return self.current.ioctl(fd, request, arg)


@dataclass
class Scsi:
    """A fake /sys and /dev: SCSI devices with their tape/sg/sr nodes."""

    root: Path
    clock: float = 0.0
    loaded: list[str] = field(default_factory=list)

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    def add(self, hctl: str, vendor: str = "IET", model: str = "VIRTUAL-TAPE", kind: int = 1, *,
            tape: str | None = None, sg: str | None = None, sr: str | None = None) -> None:
        device = self.sys / "devices/virtio0/host2" / hctl
        device.mkdir(parents=True, exist_ok=True)
        attrs = {"type": str(kind), "vendor": vendor.ljust(8), "model": model, "rev": "0001"}
        for name, value in attrs.items():
            (device / name).write_text(value + "\n")
        links = [("scsi_device", hctl)]
        for klass, node in (("scsi_tape", tape), ("scsi_generic", sg), ("block", sr)):
            if node:
                links.append((klass, node))
        if tape:
            links.append(("scsi_tape", tape[1:]))  # st0 beside nst0, as st makes them
        for klass, name in links:
            (self.sys / "class" / klass / name).mkdir(parents=True, exist_ok=True)
            os.symlink(device, self.sys / "class" / klass / name / "device")
        for _klass, node in links[1:]:
            self.dev.mkdir(exist_ok=True)
            (self.dev / node).touch()
        (self.sys / "class/scsi_host/host2").mkdir(parents=True, exist_ok=True)
        (self.sys / "class/scsi_host/host2/scan").touch()
        (self.sys / "module/st").mkdir(parents=True, exist_ok=True)

    def remove(self, hctl: str) -> None:
        for klass in ("scsi_device", "scsi_tape", "scsi_generic", "block"):
            base = self.sys / "class" / klass
            for entry in list(base.iterdir()) if base.is_dir() else []:
                if os.path.basename(os.path.realpath(entry / "device")) == hctl:
                    (entry / "device").unlink()
                    entry.rmdir()
                    (self.dev / entry.name).unlink(missing_ok=True)

    def ctx(self, *, obdr: bool = False, timeout: float = 5.0, denymods: tuple[str, ...] = (),
            log: list[str] | None = None) -> MediaContext:
        lines = log if log is not None else []

        def sleep(seconds: float) -> None:
            self.clock += seconds

        return MediaContext(cfg=BootConfig(obdr=obdr, denymods=denymods), timeout_s=timeout,
                            sys_root=str(self.sys), dev_root=str(self.dev), log=lines.append, sleep=sleep,
                            clock=lambda: self.clock)  # fmt: skip


def hooks(drives: Drives, **kwargs: object) -> TapeHooks:
    def no_modprobe(name: str) -> str | None:
        raise AssertionError(f"modprobe {name} not expected")

    return TapeHooks(syscalls=drives, **{"load_module": no_modprobe, **kwargs})  # type: ignore[arg-type]


def test_tapedev_reads_file_two(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", tape="nst0")
    model = obdr_tape()
    found = find_tape(scsi.ctx(), Choice("tape", "/dev/nst0"), hooks(Drives({"nst0": model})))
    assert (found.kind, found.source, found.path) == ("tape", "/dev/nst0", "/dev/nst0 file 2")
    data = found.data
    assert (data["sha256"], data["bytes"], data["block_size"], data["records"]) == (padded_sha(), 4 * 65536,
                                                                                    65536, 4)  # fmt: skip
    assert data["label"] == {"iso_bytes": 6144, "data_bytes": len(DATA), "data_block_size": 65536}
    assert data["files_seen"][0] == {"file": 0, "role": "header", "records": 20, "bytes": 10240,
                                     "block_size": 512, "as_written": True}  # fmt: skip
    # rewind, variable mode, past the ISO with one MTFSF, rewound at the end
    assert model.ops == [("rew", 1), ("setblk", 0), ("fsf", 1), ("rew", 1)] and model.pos == 0
    assert model.open_flags is not None and model.open_flags & os.O_ACCMODE == os.O_RDONLY


def test_a_rewinding_name_is_read_through_its_no_rewind_node_and_bad_names(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", tape="nst0")
    found = find_tape(scsi.ctx(), Choice("tape", "/dev/st0"), hooks(Drives({"nst0": obdr_tape()})))
    assert found.source == "/dev/nst0"
    for spec in ("/dev/sda", "nst0", "/dev/nst0x"):
        with pytest.raises(SourceError) as info:
            find_tape(scsi.ctx(), Choice("tape", spec), hooks(Drives({})))
        assert info.value.reason == "bad-spec"


def test_no_drive_waits_then_no_tape_and_a_late_drive_is_found(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    log: list[str] = []
    with pytest.raises(SourceError) as info:
        find_tape(scsi.ctx(timeout=3, log=log), Choice("tape", ""), hooks(Drives({})))
    assert info.value.reason == "no-tape" and scsi.clock >= 3
    assert info.value.message == "no tape drive after 3 s (tape drives: none)"
    assert log == ["media: waiting up to 3 s for a tape drive"]
    late = Scsi(tmp_path / "late")
    ctx = late.ctx(timeout=10)

    def sleep(seconds: float) -> None:
        late.clock += seconds
        if late.clock >= 2 and not tape_nodes(str(late.sys)):
            late.add("2:0:1:0", tape="nst0")

    ctx = MediaContext(cfg=ctx.cfg, timeout_s=10, sys_root=ctx.sys_root, dev_root=ctx.dev_root,
                       log=lambda line: None, sleep=sleep, clock=lambda: late.clock)  # fmt: skip
    found = find_tape(ctx, Choice("tape", "/dev/nst0"), hooks(Drives({"nst0": obdr_tape()})))
    assert found.source == "/dev/nst0"
    assert 2 <= late.clock < 3


def test_tapes_that_are_not_ours(tmp_path: Path) -> None:
    blank = DriveModel()
    blank.records.append(Record(None))  # nothing recorded: st's first read at EOD gives 0 bytes
    rear = obdr_tape(header=b"REAR-000".ljust(10240, b"\0"))
    pdf = obdr_tape(header=b"%PDF-1.4 not a tape header".ljust(10240, b"\0"))
    cases = {
        "nst0": (rear, "file 0 holds ReaR's OBDR label, not ours"),
        "nst1": (obdr_tape(header=bytes(10240)), "file 0 starts with a block of zeros (another writer's"),
        "nst2": (blank, "the tape is blank (file 0 is empty)"),
        "nst3": (pdf, "file 0 is not an initrd-composer OBDR header (it starts '%PDF-1.4"),
    }
    scsi = Scsi(tmp_path)
    for index, name in enumerate(cases):
        scsi.add(f"2:0:{index + 1}:0", tape=name)
    with pytest.raises(SourceError) as info:
        find_tape(scsi.ctx(), Choice("tape", ""), hooks(Drives({n: m for n, (m, _) in cases.items()})))
    assert info.value.reason == "wrong-tape" and info.value.hint.startswith("load the OBDR tape")
    assert info.value.message.startswith("no restore tape in /dev/nst0, /dev/nst1, /dev/nst2, /dev/nst3 (")
    for name, (_, why) in cases.items():
        assert f"/dev/{name}: {why}" in info.value.message


def test_boot_only_tape_and_any_drive_search(tmp_path: Path) -> None:
    boot_only = DriveModel()
    tape = DeviceTape("/dev/nst0", write=True, syscalls=boot_only)
    tape.set_block_size(512)
    tape.write_block(obdr_header(ObdrLabel(2048, None, None)))
    tape.write_filemark()
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", tape="nst0")
    scsi.add("2:0:2:0", tape="nst1")
    found = find_tape(scsi.ctx(), Choice("tape", ""), hooks(Drives({"nst0": boot_only, "nst1": obdr_tape()})))
    assert found.source == "/dev/nst1"
    assert found.data["tapes_checked"] == [
        {"device": "/dev/nst0", "ours": False,
         "why": "a boot-only OBDR tape: it carries no restore data (no file 2)"},
        {"device": "/dev/nst1", "ours": True, "why": None}]  # fmt: skip


def test_short_data_file_and_drive_errors(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", tape="nst0")
    short = obdr_tape(label_bytes=len(DATA) + 65536)  # the label promises one more block
    with pytest.raises(SourceError) as info:
        find_tape(scsi.ctx(), Choice("tape", "/dev/nst0"), hooks(Drives({"nst0": short})))
    assert info.value.reason == "tape-error"
    assert "holds 262144 bytes in 65536-byte records" in info.value.message
    failing = obdr_tape()
    failing.records = failing.records[:24]  # the tape ends inside the ISO: MTFSF meets EOD
    with pytest.raises(SourceError) as info:
        find_tape(scsi.ctx(), Choice("tape", "/dev/nst0"), hooks(Drives({"nst0": failing})))
    assert info.value.reason == "tape-error"
    assert info.value.message == "/dev/nst0: skipping 1 files failed: Input/output error"
    with pytest.raises(SourceError) as info:
        no_medium = Drives({}, fail_open={"nst0": errno.ENOMEDIUM})
        find_tape(scsi.ctx(), Choice("tape", "/dev/nst0"), hooks(no_medium))
    assert info.value.reason == "no-tape" and "No medium found" in info.value.message


class FakeObdrDrive:
    """An HP drive in CD-ROM emulation answering over SG_IO; MODE SELECT per `accept`."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.cdbs: list[bytes] = []
        self.closed = False

    def command(self, cdb: bytes, *, data_out: bytes | None = None, data_in: int = 0) -> SgResult:
        self.cdbs.append(cdb)
        if cdb[0] == 0x5A:
            page = bytes([0, 0x0E, 0, 0, 0, 0, 0, 0, 0x3E, 2, 1, 0])
            return SgResult(0, 0, 0, page, None, data_in - len(page), 0)
        if self.accept:
            return SgResult(0, 0, 0, b"", None, 0, 0)
        sense = decode_sense(bytes.fromhex("700005000000000a00000000260000000000"))
        return SgResult(2, 0, 8, b"", sense, 0, 0)

    def close(self) -> None:
        self.closed = True


def test_obdr_switches_an_hp_cdrom_and_rescans_until_it_is_a_tape(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:3:0", *HP_CDROM, sg="sg1", sr="sr0")
    scsi.add("2:0:1:0", "IBM", "ULT3580-TD5", 1, tape="nst0", sg="sg0")
    drive = FakeObdrDrive()
    opened: list[str] = []
    rescans: list[str] = []

    def open_sg(path: str) -> FakeObdrDrive:
        opened.append(path)
        return drive

    def rescan(device: ScsiDevice, sys_root: str) -> None:
        rescans.append(device.hctl)
        scsi.remove(device.hctl)
        if len(rescans) == 2:  # the first scan still finds the CD-ROM: the drive is reloading
            scsi.add(device.hctl, "HP", "Ultrium 3-SCSI", 1, tape="nst1", sg="sg1")
        else:
            scsi.add(device.hctl, *HP_CDROM, sg="sg1", sr="sr0")

    log: list[str] = []
    drives = Drives({"nst0": obdr_tape(header=bytes(10240)), "nst1": obdr_tape()})
    found = find_tape(scsi.ctx(obdr=True, timeout=30, log=log), Choice("tape", "", "obdr"),
                      hooks(drives, open_sg=open_sg, rescan=rescan))  # fmt: skip
    assert found.source == "/dev/nst1" and found.data["sha256"] == padded_sha()
    obdr = found.data["obdr"]
    assert obdr["candidates"] == ["2:0:3:0 HP Ultrium 3-SCSI"]
    assert obdr["skipped"] == ["2:0:1:0 IBM ULT3580-TD5 (type 1: not an HP drive)"]
    (entry,) = obdr["devices"]
    assert (entry["outcome"], entry["device"]) == ("switched", "/dev/sg1")
    assert entry["page_before"] == "3e 02 01 00"
    assert entry["rescan"] == {"rescans": 2, "type": 1, "tape": "nst1", "error": None}
    assert opened == [f"{scsi.dev}/sg1"] and drive.closed and [c[0] for c in drive.cdbs] == [0x5A, 0x55]
    assert rescans == ["2:0:3:0", "2:0:3:0"]
    assert "media: obdr: 2:0:3:0 HP Ultrium 3-SCSI (/dev/sg1): MODE SELECT(10) of page 3Eh accepted" in log


def test_obdr_refusal_loads_sg_and_leaves_the_drive(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", "HP", "Ultrium 3-SCSI", 1, tape="nst0")  # sg not loaded yet
    loaded: list[str] = []

    def modprobe(name: str) -> str | None:
        loaded.append(name)
        scsi.remove("2:0:1:0")
        scsi.add("2:0:1:0", "HP", "Ultrium 3-SCSI", 1, tape="nst0", sg="sg0")
        return None

    def no_rescan(device: ScsiDevice, sys_root: str) -> None:
        raise AssertionError("a refused switch is not followed by a rescan")

    drive = FakeObdrDrive(accept=False)
    found = find_tape(scsi.ctx(obdr=True), Choice("tape", "", "obdr"),
                      hooks(Drives({"nst0": obdr_tape()}), load_module=modprobe, open_sg=lambda p: drive,
                            rescan=no_rescan))  # fmt: skip
    (entry,) = found.data["obdr"]["devices"]
    assert entry["outcome"] == "refused" and loaded == ["sg"]
    assert entry["detail"] == ("MODE SELECT(10) of page 3Eh: CHECK CONDITION, Illegal Request: "
                               "Invalid field in parameter list (26h/00h)")
    assert found.data["obdr"]["notes"] == ["loaded sg"] and found.data["sha256"] == padded_sha()


def test_obdr_with_sg_denied_uses_the_upper_node_and_survives_open_errors(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:1:0", "HP", "Ultrium 3-SCSI", 1, tape="nst0")

    def refuse(path: str) -> FakeObdrDrive:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    found = find_tape(scsi.ctx(obdr=True, denymods=("sg",)), Choice("tape", "", "obdr"),
                      hooks(Drives({"nst0": obdr_tape()}), open_sg=refuse))  # fmt: skip
    obdr = found.data["obdr"]
    assert obdr["notes"] == ["sg not loaded: denymods= names it"]
    assert obdr["devices"][0]["outcome"] == "failed"
    assert obdr["devices"][0]["detail"] == "cannot open /dev/nst0: Operation not permitted"


def test_scsi_devices_and_st_loading_for_a_drive_that_came_back(tmp_path: Path) -> None:
    scsi = Scsi(tmp_path)
    scsi.add("2:0:10:0", "HP", "Ultrium 5-SCSI", 1, sg="sg3")
    scsi.add("2:0:2:0", *HP_CDROM, sr="sr0")
    (scsi.sys / "module/st").rmdir()
    assert [(d.hctl, d.type, d.vendor, d.tape, d.generic, d.block) for d in scsi_devices(str(scsi.sys))] == [
        ("2:0:2:0", 5, "HP", None, None, "sr0"), ("2:0:10:0", 1, "HP", None, "sg3", None)]
    loaded: list[str] = []

    def modprobe(name: str) -> str | None:
        loaded.append(name)
        scsi.remove("2:0:10:0")
        scsi.add("2:0:10:0", "HP", "Ultrium 5-SCSI", 1, tape="nst0", sg="sg3")
        return None

    found = find_tape(scsi.ctx(), Choice("tape", "/dev/nst0"),
                      hooks(Drives({"nst0": obdr_tape()}), load_module=modprobe))  # fmt: skip
    assert loaded == ["st"] and found.source == "/dev/nst0"
