"""SG_IO plumbing: the sg_io_hdr_t packing against the C header (a compiled program fills the
struct and dumps its bytes), the pointers reaching a fake ioctl, and sense decoding."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from initrd_composer.boot import scsi_generic as sg
from initrd_composer.runner import run

C_DUMP = r"""
#include <stdio.h>
#include <string.h>
#include <scsi/sg.h>
static void dump(const sg_io_hdr_t *h) {
    const unsigned char *p = (const unsigned char *)h;
    for (size_t i = 0; i < sizeof *h; i++) printf("%02x", p[i]);
    printf("\n");
}
int main(void) {
    sg_io_hdr_t h;
    memset(&h, 0, sizeof h);
    h.interface_id = 'S'; h.dxfer_direction = SG_DXFER_TO_DEV; h.cmd_len = 10; h.mx_sb_len = 64;
    h.dxfer_len = 20; h.dxferp = (void *)0x1122334455667788UL;
    h.cmdp = (unsigned char *)0x0102030405060708UL; h.sbp = (void *)0x0a0b0c0d0e0f1011UL;
    h.timeout = 60000;
    printf("%zu %d %d %d %d\n", sizeof h, SG_IO, SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV);
    dump(&h);
    h.status = 2; h.masked_status = 1; h.msg_status = 3; h.sb_len_wr = 18; h.host_status = 0x1234;
    h.driver_status = 0x08; h.resid = -5; h.duration = 77; h.info = 9;
    dump(&h);
    return 0;
}
"""


def test_header_layout_matches_the_c_struct(tmp_path: Path) -> None:
    src = tmp_path / "sgio.c"
    src.write_text(C_DUMP)
    run(["gcc", "-o", tmp_path / "sgio", src])
    constants, inputs, outputs = run([tmp_path / "sgio"]).stdout.decode().splitlines()
    size, ioctl, none, to_dev, from_dev = (int(v) for v in constants.split())
    assert (size, ioctl, none, to_dev, from_dev) == (
        sg.SG_IO_HDR.size, sg.SG_IO, sg.SG_DXFER_NONE, sg.SG_DXFER_TO_DEV, sg.SG_DXFER_FROM_DEV)
    packed = sg.pack_sg_io_hdr(direction=sg.SG_DXFER_TO_DEV, cdb_addr=0x0102030405060708, cdb_len=10,
                               data_addr=0x1122334455667788, data_len=20, sense_addr=0x0A0B0C0D0E0F1011,
                               sense_len=64, timeout_ms=60000)  # fmt: skip
    assert packed.hex() == inputs
    out = sg.unpack_sg_io_hdr(bytes.fromhex(outputs))
    assert out == sg.SgIoOut(status=2, masked_status=1, msg_status=3, sb_len_wr=18, host_status=0x1234,
                             driver_status=0x08, resid=-5, duration=77, info=9)  # fmt: skip


class FakeDevice:
    """An ioctl that acts as a device would: reads the CDB and data out through the header's
    pointers, writes a response and sense back through them."""

    def __init__(self, response: bytes = b"", sense: bytes = b"", status: int = 0) -> None:
        self.response, self.sense, self.status = response, sense, status
        self.seen: list[tuple[int, bytes, bytes, int]] = []

    def __call__(self, fd: int, request: int, buffer: bytearray) -> int:
        assert request == sg.SG_IO and len(buffer) == sg.SG_IO_HDR.size
        fields = list(sg.SG_IO_HDR.unpack(bytes(buffer)))
        assert fields[0] == ord("S")
        direction, cmd_len, sb_len, data_len, data_p, cmd_p, sense_p = (
            fields[1], fields[2], fields[3], fields[5], fields[6], fields[7], fields[8])
        cdb = ctypes.string_at(cmd_p, cmd_len)
        data_out = ctypes.string_at(data_p, data_len) if direction == sg.SG_DXFER_TO_DEV else b""
        self.seen.append((direction, cdb, data_out, data_len))
        resid = 0
        if direction == sg.SG_DXFER_FROM_DEV:
            ctypes.memmove(data_p, self.response, min(len(self.response), data_len))
            resid = data_len - min(len(self.response), data_len)
        if self.sense:
            ctypes.memmove(sense_p, self.sense, min(len(self.sense), sb_len))
        fields[13], fields[16] = self.status, len(self.sense)
        fields[18], fields[19] = 8 if self.sense else 0, resid
        buffer[:] = sg.SG_IO_HDR.pack(*fields)
        return 0


def test_sg_io_passes_cdb_and_data_and_reads_the_answer() -> None:
    device = FakeDevice(response=bytes(range(20)))
    result = sg.sg_io(7, bytes([0x5A, 0, 0x3E, 0, 0, 0, 0, 8, 0, 0]), data_in=2048, ioctl=device)
    assert device.seen == [(sg.SG_DXFER_FROM_DEV, bytes([0x5A, 0, 0x3E, 0, 0, 0, 0, 8, 0, 0]), b"", 2048)]
    assert result.ok and result.data == bytes(range(20)) and result.resid == 2028 and result.sense is None
    params = bytes([0, 0, 0x10, 8]) + bytes(8) + bytes([0x3E, 2, 0, 0])
    refused = FakeDevice(sense=bytes.fromhex("700005000000000a00000000260000000000"), status=2)
    result = sg.sg_io(7, bytes([0x15, 0x10, 0, 0, 16, 0]), data_out=params, ioctl=refused)
    assert refused.seen == [(sg.SG_DXFER_TO_DEV, bytes([0x15, 0x10, 0, 0, 16, 0]), params, 16)]
    assert not result.ok and result.sense is not None
    assert result.describe() == "CHECK CONDITION, Illegal Request: Invalid field in parameter list (26h/00h)"
    none = FakeDevice()
    assert sg.sg_io(7, bytes(6), ioctl=none).ok and none.seen[0][0] == sg.SG_DXFER_NONE


def test_ioctl_errors_propagate() -> None:
    def refuse(fd: int, request: int, buffer: bytearray) -> int:
        raise PermissionError(1, "Operation not permitted")

    with pytest.raises(PermissionError):
        sg.sg_io(7, bytes(6), ioctl=refuse)


def test_sense_fixed_and_descriptor_formats() -> None:
    fixed = sg.decode_sense(bytes.fromhex("700006000000000a00000000290000000000"))
    assert fixed is not None and (fixed.key, fixed.asc, fixed.ascq) == (6, 0x29, 0)
    assert fixed.describe() == "Unit Attention: Power on, reset, or bus device reset occurred (29h/00h)"
    descriptor = sg.decode_sense(bytes.fromhex("7205200000000000"))
    assert descriptor is not None and descriptor.describe() == (
        "Illegal Request: Invalid command operation code (20h/00h)")
    deferred = sg.decode_sense(bytes.fromhex("71000300000000000000000011000000"))
    assert deferred is not None and deferred.deferred and deferred.key_name == "Medium Error"
    unknown = sg.decode_sense(bytes.fromhex("70000b000000000a00000000c1020000"))
    assert unknown is not None and unknown.asc_text == "ASC=0xc1 ASCQ=0x02"
    assert sg.decode_sense(b"\x00\x00") is None and sg.decode_sense(b"") is None
