"""`obdr` on the command line: before the tape is looked for, every HP drive that may still be
in CD-ROM emulation (it booted this machine from the tape) is switched back to tape mode,
as ReaR does: the MODE SELECT of `sg_wr_mode -f -p 3eh -c 3e,2,0,0` (boot.obdr_mode) over
SG_IO, a pause while the drive reloads the tape, then the SCSI device is removed and scanned
again until the kernel sees a tape there.

A drive that refuses (CHECK CONDITION: not an OBDR drive, or one that cannot leave the mode)
is logged with its decoded sense and left alone; the tape search goes on either way. The
report's `media.data.obdr` says what was sent, what each drive answered, and what came back.
"""

from __future__ import annotations

from typing import Any

from initrd_composer.boot.obdr_mode import Send, leave_cdrom_emulation
from initrd_composer.boot.scsi_generic import SgResult
from initrd_composer.boot.sources.tape_devices import (
    PDT_CDROM,
    PDT_TAPE,
    ScsiDevice,
    TapeHooks,
    command_node,
    ensure_module,
    obdr_candidates,
    scsi_devices,
)

RELOAD_PAUSE_S = 2.0  # ReaR sleeps 2 s between the MODE SELECT and the rescan
POLL_S = 0.5


def _wait(ctx: Any, deadline: float, ready: Any) -> Any:
    """Poll `ready()` until it gives something true or the deadline passes."""
    while True:
        value = ready()
        if value or ctx.clock() >= deadline:
            return value
        ctx.sleep(POLL_S)


def _need_sg(ctx: Any, hooks: TapeHooks, deadline: float, record: dict[str, Any]) -> list[ScsiDevice]:
    """The candidates, after loading sg (nothing else loads it: no modalias names it)."""
    candidates = obdr_candidates(scsi_devices(ctx.sys_root))
    if candidates and any(d.generic is None for d in candidates):
        loaded, note = ensure_module("sg", ctx, hooks)
        if note:
            record["notes"].append(note)
            ctx.log(f"media: obdr: {note}")
        if not loaded:
            return candidates  # the upper drivers' nodes (sr, st) take SG_IO too
        names = {d.hctl for d in candidates}
        found = _wait(ctx, min(deadline, ctx.clock() + 5.0), lambda: [
            d for d in obdr_candidates(scsi_devices(ctx.sys_root)) if d.hctl in names and d.generic])
        if found:
            by_hctl = {d.hctl: d for d in found}
            candidates = [by_hctl.get(d.hctl, d) for d in candidates]
    return candidates


def rescan_until_tape(ctx: Any, device: ScsiDevice, hooks: TapeHooks, deadline: float) -> dict[str, Any]:
    """Rescan until the device shows as a tape that st drives, or the deadline passes."""
    out: dict[str, Any] = {"rescans": 0, "type": None, "tape": None, "error": None}
    ctx.sleep(RELOAD_PAUSE_S)
    while True:
        try:
            hooks.rescan(device, ctx.sys_root)
        except OSError as exc:
            out["error"] = f"rescanning {device.hctl} failed: {exc.strerror or exc}"
            return out
        out["rescans"] += 1

        def present() -> ScsiDevice | None:
            return next((d for d in scsi_devices(ctx.sys_root) if d.hctl == device.hctl), None)

        again = _wait(ctx, min(deadline, ctx.clock() + 10.0), present)
        if again is not None and again.type == PDT_TAPE:
            if again.tape is None:
                ensure_module("st", ctx, hooks)  # a CD-ROM at probe time: st may not be loaded
                again = _wait(ctx, deadline, lambda: next(
                    (d for d in scsi_devices(ctx.sys_root) if d.hctl == device.hctl and d.tape), None,
                )) or again
            out["type"], out["tape"] = again.type, again.tape
            return out
        out["type"] = again.type if again is not None else None
        if ctx.clock() >= deadline:
            out["error"] = (f"{device.hctl} did not come back as a tape "
                            f"({'gone' if again is None else f'type {again.type}'})")
            return out
        ctx.sleep(RELOAD_PAUSE_S)  # still a CD-ROM: the drive is reloading; ask again


def _sender(sg: Any) -> Send:
    def send(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        result: SgResult = sg.command(cdb, data_out=data_out, data_in=data_in)
        return result

    return send


def switch_obdr_drives(ctx: Any, hooks: TapeHooks) -> dict[str, Any]:
    """Switch every candidate drive; the `obdr` record for the report."""
    deadline = ctx.clock() + ctx.timeout_s
    record: dict[str, Any] = {"candidates": [], "skipped": [], "devices": [], "notes": []}
    everything = scsi_devices(ctx.sys_root)
    candidates = _need_sg(ctx, hooks, deadline, record)
    chosen = {d.hctl for d in candidates}
    record["skipped"] = [f"{d.label()} (type {d.type}: not an HP drive)" for d in everything
                         if d.type in (PDT_TAPE, PDT_CDROM) and d.hctl not in chosen]  # fmt: skip
    record["candidates"] = [d.label() for d in candidates]
    if not candidates:
        ctx.log("media: obdr: no HP tape drive or CD-ROM to take out of CD-ROM emulation")
    for device in candidates:
        node = command_node(device)
        entry: dict[str, Any] = {"hctl": device.hctl, "vendor": device.vendor, "model": device.model,
                                 "type": device.type}
        record["devices"].append(entry)
        if node is None:
            entry.update(outcome="failed", detail="no node to send SCSI commands to (sg, sr or st)")
            ctx.log(f"media: obdr: {device.label()}: {entry['detail']}")
            continue
        try:
            sg = hooks.open_sg(f"{ctx.dev_root}/{node}")
        except OSError as exc:
            entry.update(outcome="failed", detail=f"cannot open /dev/{node}: {exc.strerror or exc}")
            ctx.log(f"media: obdr: {device.label()}: {entry['detail']}")
            continue
        try:
            result = leave_cdrom_emulation(_sender(sg), device=f"/dev/{node}", pdt=device.type)
        finally:
            sg.close()
        entry.update(result.as_dict())
        ctx.log(f"media: obdr: {device.label()} (/dev/{node}): {result.detail}")
        if result.outcome == "switched":
            after = rescan_until_tape(ctx, device, hooks, deadline)
            entry["rescan"] = after
            what = after["error"] or f"back as a tape ({after['tape'] or 'no st node'})"
            ctx.log(f"media: obdr: {device.label()}: rescanned: {what}")
    return record
