"""Real tapes for the tape boot tests, written once per session. PYTEST_DONT_REWRITE.

The host has no iSCSI initiator (and its kernel no st), so the tapes are written from inside a
guest, by the tools a rescue shell has: one QEMU boot of the --all-nics image into its expert
shell, with tgt's emulated drives attached (scripts/tape_target.py) and one raw virtio disk, a
tar holding what is to be written. A script typed into the shell copies each tape file with
busybox `dd` after setting the drive's block size with `mt-st setblk` (the st driver ends the
file with its filemark when dd closes /dev/nstN: no `mt weof`, see the filemark trap in
DESIGN.md), reading straight from the disk at the member's offset in the tar:

- tape A: `compose-initrd obdr --data` output (header, ISO, data) in 512/2048/65536-byte blocks;
- tape B: another writer's OBDR tape, a 10 KiB header with ReaR's label, then a small file.

The same boot runs sg3-utils' `sg_wr_mode -vvv -f -p 3eh -c 3e,2,0,0` (and its `-6` variant)
against tape A's /dev/sgN, with tape A posing as an HP drive whose vendor page 3Eh has the CDmode
bit set: its transcript (CDBs, MODE SENSE response, parameter list, sense) is the oracle for
initrd_composer.boot.obdr_mode. The binaries and libsgutils2 come from the host (same Debian
release as the image, so the image's glibc runs them). Last, the boot side's own rescan (what
follows an accepted switch, which tgt never gives) runs on tape B's drive with the image's
Python. After the boot, `tgtimg --op show` reads back what each tape holds, record by record.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.tape import OBDR_HEADER_BLOCK, OBDR_HEADER_BLOCKS, TapeImageDir
from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage, compose

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot
import tape_target

SG_TOOLS = ("sg_wr_mode", "sg_turs")
DONE = "TAPE_WRITER_DONE"
# The rescan an accepted OBDR switch is followed by, run on tape B's drive with the boot side's
# own code: remove the SCSI device, scan its address, wait for st to drive it again.
RESCAN_PY = """\
import json
from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.sources import MediaContext
from initrd_composer.boot.sources.obdr_switch import rescan_until_tape
from initrd_composer.boot.sources.tape_devices import TapeHooks, scsi_devices
ctx = MediaContext(cfg=BootConfig(), timeout_s=30, log=lambda line: None)
(before,) = [d for d in scsi_devices() if d.hctl.endswith(":0:2:0")]
out = rescan_until_tape(ctx, before, TapeHooks(), ctx.clock() + ctx.timeout_s)
after = [d.tape for d in scsi_devices() if d.hctl == before.hctl]
print("RESCAN_RESULT " + json.dumps({"before": before.tape, "after": after, "result": out}))
"""


@dataclass(frozen=True)
class WrittenTapes:
    obdr: Path  # tape A's image (our OBDR layout); copy it before serving it
    foreign: Path  # tape B's image (ReaR's label)
    layout: Path  # the tape-image directory compose-initrd obdr wrote (what tape A holds)
    data_sha256: str  # of tape file 2 as the writer laid it
    records: dict[str, list[list[int]]]  # per tape: record sizes per file (tgtimg --op show)
    transcripts: dict[str, str]  # "10", "6": what sg_wr_mode -vvv printed
    exit_status: dict[str, int]  # and how it exited
    rescan: dict[str, Any]  # tape B's drive removed and scanned again (RESCAN_PY)
    rescan_attached: int  # how often the kernel log says st attached tape B's drive
    console: tuple[str, ...]  # the writer boot's console
    seconds: float


def hp_drive(image: Path) -> tape_target.TapeLun:
    """An HP Ultrium in tape mode whose page 3Eh still says CD-ROM mode (byte 2 bit 0): tgt
    answers MODE SENSE with it and refuses the MODE SELECT that would clear it."""
    return tape_target.TapeLun(image, vendor_id="HP", product_id="Ultrium 3-SCSI",
                               mode_pages=("0x3e:0:2:1:0",))


def _member_script(tar: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(offset, size) of members inside the tar, to read them from the raw disk."""
    with tarfile.open(tar) as archive:
        return {m.name: (m.offset_data, m.size) for m in archive.getmembers() if m.name in names}


def _sg_library(tool: str) -> Path:
    out = run(["ldd", tool]).stdout.decode()
    for line in out.splitlines():
        if "libsgutils2" in line and "=>" in line:
            return Path(line.split("=>")[1].split()[0])
    raise AssertionError(f"ldd {tool}: no libsgutils2 in\n{out}")


def _add(archive: tarfile.TarFile, name: str, data: bytes | Path) -> None:
    payload = data.read_bytes() if isinstance(data, Path) else data
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o755
    archive.addfile(info, io.BytesIO(payload))


def _script(offsets: dict[str, tuple[int, int]], files: dict[str, str], soname: str) -> str:
    """The shell script the guest runs (busybox ash). `files` maps roles to member names."""

    def member(name: str) -> tuple[int, int]:
        return offsets[name]

    def extract(name: str, dest: str) -> str:
        off, size = member(name)
        return f"head -c {off + size} $DISK | tail -c {size} > {dest} && chmod 755 {dest}"

    def tape_file(dev: str, role: str, block: int) -> list[str]:
        return copy_to_tape(offsets[files[role]], dev, role, block)

    lines = [
        "dmesg -n 1",  # no kernel lines in the middle of a transcript
        "DISK=/dev/vda",
        'step() { echo "TAPE_STEP $1 rc=$2"; }',
        "mkdir -p /tmp/w",
        *[extract(f"sg/{tool}", f"/tmp/w/{tool}") for tool in SG_TOOLS],
        extract("sg/libsgutils2.so", f"/tmp/w/{soname}"),
        "modprobe sg; step modprobe-sg $?",
        # tape A is SCSI id 1, tape B id 2 (tape_target.qemu_args): find their nodes by address
        "A=$(ls /sys/class/scsi_device/*:0:1:0/device/scsi_tape | grep -E '^nst[0-9]+$')",
        "B=$(ls /sys/class/scsi_device/*:0:2:0/device/scsi_tape | grep -E '^nst[0-9]+$')",
        "SG=$(ls /sys/class/scsi_device/*:0:1:0/device/scsi_generic)",
        'echo "TAPE_NODES A=$A B=$B SG=$SG"',
        # first, while the drive is as fresh as in a test boot: MTSETBLK changes the block
        # descriptor MODE SENSE returns, and so the parameter list
        "export LD_LIBRARY_PATH=/tmp/w",
        "/tmp/w/sg_turs /dev/$SG >/dev/null 2>&1",  # takes a pending UNIT ATTENTION
        "echo SGWR_10_BEGIN; /tmp/w/sg_wr_mode -vvv -f -p 3eh -c 3e,2,0,0 /dev/$SG 2>&1;"
        ' echo "SGWR_10_END rc=$?"',
        "echo SGWR_6_BEGIN; /tmp/w/sg_wr_mode -vvv -6 -f -p 3eh -c 3e,2,0,0 /dev/$SG 2>&1;"
        ' echo "SGWR_6_END rc=$?"',
        "mt-st -f /dev/$A rewind; step rewind-a $?",
        *tape_file("A", "header", OBDR_HEADER_BLOCK),
        *tape_file("A", "iso", 2048),
        *tape_file("A", "data", 65536),
        "mt-st -f /dev/$A rewind; step rewind-a-end $?",
        "mt-st -f /dev/$B rewind; step rewind-b $?",
        *tape_file("B", "foreign-header", OBDR_HEADER_BLOCK),
        *tape_file("B", "foreign-data", 10240),
        "mt-st -f /dev/$B rewind; step rewind-b-end $?",
        "cat > /tmp/w/rescan.py <<'PY'", *RESCAN_PY.splitlines(), "PY",
        "PYTHONPATH=/usr/lib/initrd-composer/python python3 /tmp/w/rescan.py; step rescan $?",
        "echo RESCAN_ATTACHED $(dmesg | grep -c ':0:2:0: Attached scsi tape')",
        f"echo {DONE}",
    ]
    return "\n".join(lines) + "\n"


def copy_to_tape(member: tuple[int, int], dev: str, role: str, block: int) -> list[str]:
    """Shell lines: the tar member at (offset, size) on $DISK onto the drive $`dev` as one tape
    file in `block`-byte blocks (st writes its filemark when dd closes the device)."""
    off, size = member
    return [f"mt-st -f /dev/${dev} setblk {block}; step setblk-{role} $?",
            f"dd if=$DISK of=/dev/${dev} bs=1M iflag=skip_bytes,count_bytes skip={off} count={size}"
            f" 2>/dev/null; step dd-{role} $?"]


def copy_writer_disk(dest: Path, layout: Path) -> tuple[Path, str]:
    """The writer boot's disk and line for one tape (SCSI id 1): the tape-image directory's
    files onto it, each in the block size the writer used, as `compose-initrd obdr -o
    /dev/nstN` lays them."""
    tape = TapeImageDir.open(layout)
    names = {f"file-{i:03d}.bin": tape.file_path(i) for i in range(len(tape.files))}
    members: dict[str, bytes | Path] = dict(names)
    disk = dest / "copy-writer.tar"
    _writer_tar(disk, b"#" * SCRIPT_SLOT, members)
    offsets = _member_script(disk, list(members))
    lines = ["dmesg -n 1", "DISK=/dev/vda", 'step() { echo "TAPE_STEP $1 rc=$2"; }',
             "A=$(ls /sys/class/scsi_device/*:0:1:0/device/scsi_tape | grep -E '^nst[0-9]+$')",
             "mt-st -f /dev/$A rewind; step rewind $?"]
    for i, name in enumerate(names):
        lines += copy_to_tape(offsets[name], "A", f"file-{i}", tape.files[i]["block_size"])
    lines += ["mt-st -f /dev/$A rewind; step rewind-end $?", f"echo {DONE}"]
    script = ("\n".join(lines) + "\n").encode()
    _writer_tar(disk, script.ljust(SCRIPT_SLOT, b"\n"), members)
    off, size = _member_script(disk, ["write.sh"])["write.sh"]
    typed = f"head -c {off + size} /dev/vda | tail -c {size} > /tmp/write.sh; sh /tmp/write.sh\n"
    return disk, typed


def write_tape(image: BuiltImage, disk: Path, typed: str, tape: Path, log: Path) -> qemu_boot.BootResult:
    """One writer boot into the expert shell, `tape` as SCSI id 1; every step must succeed."""
    with tape_target.TapeTarget([tape_target.TapeLun(tape)], name="copy", log_path=log) as target:
        devices = ["-drive", f"file={disk},if=virtio,format=raw,readonly=on", *target.qemu_args()]
        result = qemu_boot.boot(vmlinuz(image), image.path, "console=ttyS0", devices, timeout=900,
                                until=DONE, replies=[qemu_boot.Reply("expert mode", typed)])  # fmt: skip
    lines = list(result.lines)
    steps = [line for line in lines if line.startswith("TAPE_STEP ")]
    assert result.reason == "matched" and steps and all(line.endswith(" rc=0") for line in steps), (
        "\n".join(lines[-60:]))
    return result


def foreign_header() -> bytes:
    """A header as ReaR's OBDR output writes it: its label, then zeros, 20 x 512 bytes."""
    return b"REAR-000".ljust(OBDR_HEADER_BLOCK * OBDR_HEADER_BLOCKS, b"\0")


SCRIPT_SLOT = 8192  # write.sh is the tar's first member, padded to this size


def _writer_tar(disk: Path, script: bytes, members: dict[str, bytes | Path]) -> None:
    with tarfile.open(disk, "w", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "write.sh", script)
        for name, payload in members.items():
            _add(archive, name, payload)


def build_writer_disk(dest: Path, layout: Path) -> tuple[Path, str]:
    """The tar the writer boot reads, and the line to type: it cuts the script (the tar's
    first member) out of the raw disk and runs it; the script finds the rest by offset."""
    tape = TapeImageDir.open(layout)
    files = {"header": "obdr/file-000.bin", "iso": "obdr/file-001.bin", "data": "obdr/file-002.bin",
             "foreign-header": "foreign/file-000.bin", "foreign-data": "foreign/file-001.bin"}
    tools = {tool: Path(shutil.which(tool) or f"/usr/bin/{tool}") for tool in SG_TOOLS}
    library = _sg_library(str(tools["sg_wr_mode"]))
    members: dict[str, bytes | Path] = {f"sg/{tool}": path for tool, path in tools.items()}
    members["sg/libsgutils2.so"] = library
    for index, role in enumerate(("header", "iso", "data")):
        members[files[role]] = tape.file_path(index)
    members[files["foreign-header"]] = foreign_header()
    members[files["foreign-data"]] = b"not an initrd-composer tape\n".ljust(10240, b"\0")
    disk = dest / "writer.tar"
    _writer_tar(disk, b"#" * SCRIPT_SLOT, members)  # offsets first, with a slot of the final size
    script = _script(_member_script(disk, list(members)), files, library.name).encode()
    assert len(script) < SCRIPT_SLOT, len(script)
    _writer_tar(disk, script.ljust(SCRIPT_SLOT, b"\n"), members)
    off, size = _member_script(disk, ["write.sh"])["write.sh"]
    typed = f"head -c {off + size} /dev/vda | tail -c {size} > /tmp/write.sh; sh /tmp/write.sh\n"
    return disk, typed


def between(lines: Sequence[str], begin: str, end: str) -> tuple[str, int]:
    """The lines between the markers, and the exit status the end marker carries."""
    start = next(i for i, line in enumerate(lines) if line.strip() == begin)
    stop = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(end))
    return "\n".join(lines[start + 1 : stop]) + "\n", int(lines[stop].rsplit("rc=", 1)[1])


def vmlinuz(image: BuiltImage) -> Path:
    return Path(f"/boot/vmlinuz-{image.version}")


@pytest.fixture(scope="session")
def obdr_layout(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`compose-initrd obdr --data DIR -o LAYOUT`: the tape-image directory tape A receives."""
    base = tmp_path_factory.mktemp("tape-layout")
    data = base / "data"
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (data / "big.bin").write_bytes(hashlib.sha256(b"tape").digest() * (2**20 // 32 * 3 + 7))
    initrd = ["--initrd", str(all_nics_image.path), "--default-mode", "probe", "--timeout", "1"]
    assert compose(["obdr", *initrd, "--data", str(data), "-o", str(base / "layout")], build_cache) == 0
    return base / "layout"


@pytest.fixture(scope="session")
def written_tapes(all_nics_image: BuiltImage, obdr_layout: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> WrittenTapes:
    base = tmp_path_factory.mktemp("tapes")
    obdr = tape_target.new_tape(base / "obdr.img", barcode="OBDR0001", size_mb=256)
    foreign = tape_target.new_tape(base / "foreign.img", barcode="REAR0001", size_mb=64)
    disk, typed = build_writer_disk(base, obdr_layout)
    luns = [hp_drive(obdr), tape_target.TapeLun(foreign)]
    with tape_target.TapeTarget(luns, name="writer", log_path=base / "tgtd.log") as target:
        devices = ["-drive", f"file={disk},if=virtio,format=raw,readonly=on", *target.qemu_args()]
        result = qemu_boot.boot(vmlinuz(all_nics_image), all_nics_image.path, "console=ttyS0", devices,
                                timeout=400, until=DONE,
                                replies=[qemu_boot.Reply("expert mode", typed)])  # fmt: skip
    lines = list(result.lines)
    tail = "\n".join(lines[-60:])
    assert result.reason == "matched", tail
    steps = [line for line in lines if line.startswith("TAPE_STEP ")]
    assert steps and all(line.endswith(" rc=0") for line in steps), "\n".join(steps) + "\n" + tail
    records = {name: tape_target.files_of(tape_target.show(path)) for name, path in
               (("obdr", obdr), ("foreign", foreign))}  # fmt: skip
    data_sha = TapeImageDir.open(obdr_layout).files[2]["sha256"]
    runs = {key: between(lines, f"SGWR_{key}_BEGIN", f"SGWR_{key}_END") for key in ("10", "6")}
    os.chmod(obdr, 0o444)  # the tests serve copies
    os.chmod(foreign, 0o444)
    rescan = json.loads(next(line for line in lines if line.startswith("RESCAN_RESULT ")).split(" ", 1)[1])
    attached = int(next(line for line in lines if line.startswith("RESCAN_ATTACHED ")).split()[1])
    return WrittenTapes(obdr, foreign, obdr_layout, data_sha, records, {k: v[0] for k, v in runs.items()},
                        {k: v[1] for k, v in runs.items()}, rescan, attached, tuple(lines), result.elapsed)
