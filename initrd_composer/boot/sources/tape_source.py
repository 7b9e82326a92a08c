"""The tape source: restore data in file 2 of an OBDR tape (`compose-initrd obdr --data`),
in a SCSI tape drive the st driver runs.

`tapedev=/dev/nstN` names the drive (a rewinding /dev/stN is read through its no-rewind twin,
as ReaR does: a close must not rewind between the steps); without it every drive is tried.
Drives are waited for up to the media timeout. With `obdr`, HP drives are first taken out of
CD-ROM emulation (sources.obdr_switch).

On each drive: rewind, read file 0 in variable mode and recognise our OBDR header by its label
(boot.tape.parse_obdr_label) — any other tape (another writer's header, a blank one, a backup
tape) is the wrong tape; then space forward over the ISO (MTFSF) to file 2, and stream it:
record size (the block size it was written with), byte count and sha256, checked against the
label. That proves the drive gives back the bytes written; the restore stage streams the same
file again (boot.tape.open_tape_file). The tape is rewound at the end.

Reasons: no-tape (no drive appeared, or no cartridge), wrong-tape, tape-error (a read or
positioning failure: the message carries the errno's meaning).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError
from initrd_composer.boot.sources.tape_devices import (
    PDT_TAPE,
    TAPE_NODE,
    TapeHooks,
    ensure_module,
    scsi_devices,
    tape_nodes,
)
from initrd_composer.boot.sources.tape_set import index_members
from initrd_composer.boot.tape import (
    MAX_BLOCK,
    OBDR_HEADER_BLOCK,
    OBDR_HEADER_BLOCKS,
    OBDR_MAGIC,
    DeviceTape,
    ObdrLabel,
    TapeError,
    blocks_stream,
    parse_obdr_label,
)

DATA_FILE = 2  # header, ISO, data
POLL_S = 0.5
MAX_HEADER_RECORDS = 4 * OBDR_HEADER_BLOCKS  # a file 0 longer than this is no OBDR header
WRONG_HINT = "load the OBDR tape `compose-initrd obdr --data DIR` wrote, or name its drive with tapedev="


class _NotOurs(Exception):
    """The tape in this drive is not one of ours; the message says what it is instead."""


def find(ctx: MediaContext, choice: Choice) -> Found:
    return find_tape(ctx, choice, TapeHooks())


def find_tape(ctx: MediaContext, choice: Choice, hooks: TapeHooks) -> Found:
    obdr: dict[str, Any] | None = None
    if ctx.cfg.obdr:
        from initrd_composer.boot.sources.obdr_switch import switch_obdr_drives  # noqa: PLC0415

        obdr = switch_obdr_drives(ctx, hooks)
    names = _drives(ctx, choice, hooks)
    checked: list[dict[str, Any]] = []
    errors: list[SourceError] = []
    for name in names:
        source = f"/dev/{name}"
        try:
            data = _read(ctx, name, hooks)
        except _NotOurs as exc:
            checked.append({"device": source, "ours": False, "why": str(exc)})
            ctx.log(f"media: {source}: {exc}")
            continue
        except TapeError as exc:
            error = _tape_error(source, exc)
            errors.append(error)
            checked.append({"device": source, "ours": False, "why": error.message})
            ctx.log(f"media: {error.message}")
            continue
        data["tapes_checked"] = [*checked, {"device": source, "ours": True, "why": None}]
        if obdr is not None:
            data["obdr"] = obdr
        return Found("tape", source, f"{source} file {DATA_FILE}", data)
    if errors and len(errors) == len(names):
        raise errors[0]
    seen = "; ".join(f"{c['device']}: {c['why']}" for c in checked)
    raise SourceError(f"no restore tape in {', '.join('/dev/' + n for n in names)} ({seen})", WRONG_HINT,
                      reason="wrong-tape")


def _tape_error(source: str, exc: TapeError) -> SourceError:
    if exc.errno in (errno.ENOMEDIUM, errno.ENXIO):
        return SourceError(exc.message, exc.hint, reason="no-tape")
    return SourceError(exc.message, exc.hint, reason="tape-error")


def _wanted(choice: Choice) -> str | None:
    """The node tapedev= names, as a no-rewind node (nstN); None: any drive."""
    spec = choice.spec.strip()
    if not spec:
        return None
    name = os.path.basename(spec)
    if name.startswith("st") and name[2:].isdigit():
        name = "n" + name  # /dev/st0 rewinds on close: read it as /dev/nst0
    if not spec.startswith("/dev/") or not TAPE_NODE.match(name):
        raise SourceError(f"tapedev={spec} is not a tape device", "give tapedev=/dev/nst0 (ls /dev/nst*)",
                          reason="bad-spec")
    return name


def _drives(ctx: MediaContext, choice: Choice, hooks: TapeHooks) -> list[str]:
    """The drives to try, waiting up to the timeout for the first (or the named one)."""
    wanted = _wanted(choice)
    deadline = ctx.clock() + ctx.timeout_s
    told = tried_st = False
    while True:
        tried_st = tried_st or _load_st(ctx, hooks)
        nodes = tape_nodes(ctx.sys_root)
        if wanted is not None and os.path.exists(f"{ctx.dev_root}/{wanted}"):
            return [wanted]
        if wanted is None and nodes:
            return nodes
        if ctx.clock() >= deadline:
            break
        if not told:
            ctx.log(f"media: waiting up to {ctx.timeout_s:g} s for "
                    f"{'/dev/' + wanted if wanted else 'a tape drive'}")
            told = True
        ctx.sleep(POLL_S)
    present = ", ".join(f"/dev/{n}" for n in nodes) or "none"
    what = f"/dev/{wanted}" if wanted else "tape drive"
    raise SourceError(f"no {what} after {ctx.timeout_s:g} s (tape drives: {present})",
                      "connect the drive, check it is powered and on the bus (dmesg), or give tapedev=",
                      reason="no-tape")


def _load_st(ctx: MediaContext, hooks: TapeHooks) -> bool:
    """st for a tape-type device nothing drives yet (an OBDR drive that came back as a tape);
    True once that was tried."""
    if not any(d.type == PDT_TAPE and d.tape is None for d in scsi_devices(ctx.sys_root)):
        return False
    _loaded, note = ensure_module("st", ctx, hooks)
    if note:
        ctx.log(f"media: {note}")
    return True


def _foreign(first: bytes) -> str:
    """What a file 0 that is not our header looks like."""
    if not first.strip(b"\0"):
        if len(first) == OBDR_HEADER_BLOCK:  # MondoRescue's header: twenty blocks of zeros
            return "file 0 starts with a block of zeros (another writer's OBDR tape, e.g. MondoRescue's)"
        return f"file 0 starts with {len(first)} zero bytes, not our label"
    if first.startswith(b"REAR-000"):
        return "file 0 holds ReaR's OBDR label, not ours"
    text = first[:24].decode("ascii", "replace")
    printable = "".join(c if c.isprintable() else "." for c in text)
    return f"file 0 is not an initrd-composer OBDR header (it starts {printable!r})"


def _header(tape: DeviceTape) -> tuple[ObdrLabel, list[int]]:
    """File 0, read from the beginning in variable mode: our label and the record sizes."""
    tape.rewind()
    tape.set_block_size(0)
    first = tape.read_block(MAX_BLOCK)
    if not first:
        raise _NotOurs("the tape is blank (file 0 is empty)")
    if not first.startswith(OBDR_MAGIC[: len(first)]):
        raise _NotOurs(_foreign(first))
    header, sizes = bytearray(first), [len(first)]
    while block := tape.read_block(MAX_BLOCK):
        header += block
        sizes.append(len(block))
        if len(sizes) > MAX_HEADER_RECORDS:
            raise _NotOurs(f"file 0 has more than {MAX_HEADER_RECORDS} records: not an OBDR header")
    label = parse_obdr_label(bytes(header))
    if label is None:
        raise _NotOurs(_foreign(first))
    if label.data_bytes is None:
        raise _NotOurs("a boot-only OBDR tape: it carries no restore data (no file 2)")
    return label, sizes


class _Tally:
    """What passes by as the data file is read: bytes, records, their sizes, the sha256."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = self.records = self.first = 0
        self.sizes: set[int] = set()

    def blocks(self, tape: DeviceTape) -> Iterator[bytes]:
        while block := tape.read_block(MAX_BLOCK):
            self.first = self.first or len(block)
            self.sizes.add(len(block))
            self.sha.update(block)
            self.size += len(block)
            self.records += 1
            yield block


def _read(ctx: MediaContext, name: str, hooks: TapeHooks) -> dict[str, Any]:
    source = f"/dev/{name}"
    tape = DeviceTape(f"{ctx.dev_root}/{name}", syscalls=hooks.syscalls)
    tape.name = source  # messages name the device as the user knows it
    try:
        label, header_sizes = _header(tape)
        ctx.log(f"media: {source}: OBDR tape: ISO {label.iso_bytes} bytes, restore data "
                f"{label.data_bytes} bytes in {label.data_block_size}-byte blocks")
        tape.skip_files(DATA_FILE - 1)  # past the ISO: file 0's filemark was read already
        tally = _Tally()
        stream = blocks_stream(tally.blocks(tape))
        index = index_members(stream)  # the set's files, for the restore (sources.tape_set)
        while stream.read(1 << 20):  # after the tar's end: the padding to whole blocks
            pass
        tape.rewind()
    finally:
        try:
            tape.close()
        except TapeError as exc:
            ctx.log(f"media: {exc.message}")
    sha, size, records, first, sizes = tally.sha, tally.size, tally.records, tally.first, tally.sizes
    data_bytes = label.data_bytes or 0
    unit = label.data_block_size or first
    expected = -(-data_bytes // unit) * unit if unit else data_bytes
    if first != label.data_block_size or size != expected:
        raise TapeError(f"{source}: tape file {DATA_FILE} holds {size} bytes in {first}-byte records; "
                        f"the label says {data_bytes} bytes in {label.data_block_size}-byte blocks "
                        f"({expected} with the padding)",
                        "the tape was not written to its end, or it is damaged: write it again",
                        errno.EIO)  # fmt: skip
    return {
        "device": source,
        "label": {"iso_bytes": label.iso_bytes, "data_bytes": label.data_bytes,
                  "data_block_size": label.data_block_size},
        "block_size": first,
        "bytes": size,
        "records": records,
        "sha256": sha.hexdigest(),
        "set_index": index.as_json(),
        "files_seen": [
            {"file": 0, "role": "header", "records": len(header_sizes), "bytes": sum(header_sizes),
             "block_size": header_sizes[0],
             "as_written": header_sizes == [OBDR_HEADER_BLOCK] * OBDR_HEADER_BLOCKS},
            {"file": 1, "role": "iso", "skipped": True},
            {"file": DATA_FILE, "role": "data", "records": records, "bytes": size, "block_size": first,
             "record_sizes": sorted(sizes)},
        ],
    }  # fmt: skip
