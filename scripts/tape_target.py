#!/usr/bin/env python3
"""A real SCSI tape for QEMU guests: tgt's emulated SSC drive, served over iSCSI on loopback.

Used by the tape boot tests and the benchmark. `new_tape()` makes a tape image with
`tgtimg`; `TapeTarget` runs `tgtd -f` on a free port with a private control port (so several
targets and other tgtd users can coexist), adds one target with a LUN per tape, binds it for
every initiator, and gives the QEMU arguments that pass each LUN to the guest as a SCSI
device (`scsi-generic` over QEMU's iscsi block driver, on one virtio-scsi HBA), where the
guest's `st` driver binds and /dev/nst0, /dev/nst1... appear. `show()` reads what a tape holds
(`tgtimg --op show`: records and filemarks) once its tgtd has stopped.

A LUN can pose as another drive (`vendor_id=`, `product_id=`) and carry extra mode pages
(`mode_page=PAGE:SUBPAGE:LEN:BYTE:...`, tgtadm's syntax): that is how the OBDR test shows the
guest an HP drive whose vendor page 3Eh has the CD-ROM-mode bit set. tgt's SSC emulation
answers MODE SENSE for such a page but refuses every MODE SELECT of it (its page update hook
returns an error): CHECK CONDITION, ILLEGAL REQUEST, invalid field in parameter list; it knows
no MODE SELECT(10) at all (invalid command operation code).

Where tgt's drive is not a real one: the first command after the LUN appears meets a power-on
UNIT ATTENTION, and a READ at the start of a blank cartridge returns a buffer of zeros where a
drive would report BLANK CHECK (so "blank tape" cases are unit-tested, not booted).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

IQN_PREFIX = "iqn.2026-01.org.initrd-composer"
TGT_IPC_DIR = Path("/var/run/tgtd")  # tgtd's management sockets live here
START_TIMEOUT_S = 10.0


class TapeTargetError(Exception):
    """tgtd or a tgt tool failed; the message quotes the command and its last line."""


def _run(argv: Sequence[str | os.PathLike[str]], *, timeout: float = 30.0) -> str:
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    except FileNotFoundError as exc:
        raise TapeTargetError(f"cannot run {args[0]}: not found (install tgt)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TapeTargetError(f"timed out after {timeout:g} s: {' '.join(args)}") from exc
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        last = (out.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise TapeTargetError(f"{' '.join(args)}: {last}")
    return out


def new_tape(path: Path, *, barcode: str = "RESCUE01", size_mb: int = 256) -> Path:
    """An empty data cartridge image at `path` (tgtimg refuses to overwrite one)."""
    _run(["tgtimg", "--op", "new", "--device-type", "tape", f"--barcode={barcode}", f"--size={size_mb}",
          "--type=data", f"--file={path}"])  # fmt: skip
    return path


@dataclass(frozen=True)
class TapeRecord:
    """One entry of a tape image: a data record of `size` bytes, or a filemark."""

    kind: str  # "data" | "filemark"
    size: int


# tgtimg --op show prints one line per header: "  Uncompressed data(4): Blk No. 3, ... sz 512"
_SHOW_LINE = re.compile(r"^\s*(?P<what>[A-Za-z ]+)\((?P<type>\d+)\): .*?sz (?P<size>\d+)\s*$")


def show(image: Path) -> list[TapeRecord]:
    """The records and filemarks on a tape image, in order (beginning and end of data left out).
    Read it only while no tgtd serves the image."""
    out: list[TapeRecord] = []
    for line in _run(["tgtimg", "--op", "show", "--device-type", "tape", f"--file={image}"]).splitlines():
        match = _SHOW_LINE.match(line)
        if not match:
            continue
        what = match["what"].strip().lower()
        if what == "filemark":
            out.append(TapeRecord("filemark", 0))
        elif "data" in what and what != "end of data":
            out.append(TapeRecord("data", int(match["size"])))
    return out


def files_of(records: Sequence[TapeRecord]) -> list[list[int]]:
    """Records grouped into tape files (each ended by a filemark) as lists of record sizes;
    records after the last filemark form a last, unterminated file."""
    files: list[list[int]] = []
    current: list[int] = []
    for record in records:
        if record.kind == "filemark":
            files.append(current)
            current = []
        else:
            current.append(record.size)
    if current:
        files.append(current)
    return files


@dataclass(frozen=True)
class TapeLun:
    """One tape in the target: its image and how the drive presents itself."""

    image: Path
    vendor_id: str | None = None  # INQUIRY vendor (8 chars at most), tgt's default "IET"
    product_id: str | None = None  # INQUIRY product, tgt's default "VIRTUAL-TAPE"
    mode_pages: tuple[str, ...] = ()  # tgtadm mode_page= values, e.g. "0x3e:0:2:1:0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TapeTarget:
    """A running tgtd with one target holding `luns` (LUN 1, 2, ...). Use as a context manager,
    or call start() and stop()."""

    luns: Sequence[TapeLun]
    name: str = "tape"
    port: int = 0  # 0: a free one
    log_path: Path | None = None  # tgtd's own output (it is chatty about every READ_6)
    control_port: int = 0
    iqn: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> TapeTarget:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _adm(self, *args: str) -> str:
        return _run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args])

    def start(self) -> None:
        for tool in ("tgtd", "tgtadm"):
            if shutil.which(tool) is None:
                raise TapeTargetError(f"{tool} not found (install tgt)")
        for lun in self.luns:
            if not Path(lun.image).is_file():
                raise TapeTargetError(f"{lun.image}: no such tape image")
        self.port = self.port or _free_port()
        # tgtd takes a control port up to 32767 (its management socket's suffix); derived from
        # the free TCP port, it is unique among this host's targets
        self.control_port = self.control_port or 1000 + self.port % 31000
        self.iqn = self.iqn or f"{IQN_PREFIX}:{self.name}-{self.port}"
        TGT_IPC_DIR.mkdir(parents=True, exist_ok=True)
        argv = ["tgtd", "-f", "-C", str(self.control_port), "--iscsi", f"portal=127.0.0.1:{self.port}"]
        self._log = open(self.log_path, "wb") if self.log_path else None  # closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
            self._adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", self.iqn)
            for number, lun in enumerate(self.luns, start=1):
                self._adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(number),
                          "--device-type", "tape", "-b", str(lun.image), "--bstype", "ssc")
                params = [f"{key}={value}" for key, value in
                          (("vendor_id", lun.vendor_id), ("product_id", lun.product_id)) if value]
                params += [f"mode_page={page}" for page in lun.mode_pages]
                for param in params:  # one at a time: values may hold commas' neighbours
                    self._adm("--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun",
                              str(number), "--params", param)
            self._adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise TapeTargetError(f"tgtd exited with status {self._proc.returncode} at start"
                                      + (f" (see {self.log_path})" if self.log_path else ""))
            try:
                self._adm("--mode", "sys", "--op", "show")
                return
            except TapeTargetError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/{lun}"

    def qemu_args(self, hba: str = "tapehba") -> list[str]:
        """One virtio-scsi HBA and a scsi-generic device per LUN, in LUN order (so the guest
        numbers them st0, st1, ... in that order)."""
        args = ["-device", f"virtio-scsi-pci,id={hba}"]
        for number in range(1, len(self.luns) + 1):
            args += ["-drive", f"file={self.url(number)},if=none,id=tape{number},format=raw", "-device",
                     f"scsi-generic,drive=tape{number},bus={hba}.0,channel=0,scsi-id={number},lun=0"]
        return args

    def show_luns(self) -> str:
        """tgtadm's description of the target (its LUNs, sizes, backing files)."""
        return self._adm("--mode", "target", "--op", "show")

    def stop(self) -> None:
        """Stop tgtd (SIGTERM, then SIGKILL); the images are then safe to read or copy."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
