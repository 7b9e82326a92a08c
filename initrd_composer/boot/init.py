"""/init: the boot side's entry point (PID 1)."""

from __future__ import annotations

import os
import signal
from typing import Any

from initrd_composer.boot import early
from initrd_composer.boot.cmdline import BootConfig, parse_cmdline
from initrd_composer.boot.console import emit, log, stage_line, uptime
from initrd_composer.boot.emergency import emergency, power, run_shell
from initrd_composer.boot.hwreport import publish
from module_db.contract import MANIFEST_PATH, SCAN_SETTLE_MS, SETTLE_MS, ImageManifest


def _read_cmdline() -> str:
    try:
        with open("/proc/cmdline") as f:
            return f.read()
    except OSError as exc:  # the menu's mode and network words are lost: say so
        log(f"cannot read /proc/cmdline: {exc.strerror}; going on without kernel parameters", 3)
        return ""


def _fail_point(cmdline: str, stage: str) -> None:
    """Tests make a stage fail on purpose with initrd_composer.fail=STAGE."""
    if f"initrd_composer.fail={stage}" in cmdline.split():
        raise RuntimeError(f"failure requested on the kernel command line in stage {stage}")


def load_manifest(root: str = "/") -> ImageManifest:
    with open(os.path.join(root, MANIFEST_PATH)) as f:
        return ImageManifest.from_json(f.read())


def probe(cfg: BootConfig, cmdline: str, t_start: float) -> dict[str, Any]:
    import pyudev  # noqa: PLC0415 - after /sys is mounted

    from initrd_composer.boot.coldplug import Prober  # noqa: PLC0415
    from initrd_composer.boot.hwreport import build_report  # noqa: PLC0415
    from initrd_composer.boot.modload import ModuleLoader  # noqa: PLC0415
    from module_db.alias_match import AliasIndex  # noqa: PLC0415

    manifest = load_manifest()
    km = manifest.kernel_modules()
    release = os.uname().release
    if release != manifest.kernel:
        log(f"running kernel {release} but the image carries modules for {manifest.kernel}", 3)
    _fail_point(cmdline, "probe")
    loader = ModuleLoader(km, f"/lib/modules/{manifest.kernel}", deny=cfg.denymods)
    prober = Prober(
        loader,
        AliasIndex(manifest.aliases),
        AliasIndex(manifest.builtin_aliases),
        settle_s=float(manifest.boot.get("settle_ms", SETTLE_MS)) / 1000,
        scan_settle_s=float(manifest.boot.get("scan_settle_ms", SCAN_SETTLE_MS)) / 1000,
    )
    context = pyudev.Context()
    state = prober.run(context, force=cfg.forcemods)
    timings = {"init_start": t_start, "probe_end": uptime()}
    report = build_report(context, state, loader.result, timings, cmdline=cfg)
    for mod, why in sorted(loader.result.failed.items()):
        log(f"module {mod}: {why}", 4)
    return report


def storage_stage(cfg: BootConfig, report: dict[str, Any]) -> None:
    """Assemble md arrays and activate LVM volume groups on every boot; the result goes
    into the report. Never fatal."""
    from initrd_composer.boot.storage.assemble import run_storage, storage_detail  # noqa: PLC0415

    section = run_storage()
    report["storage"] = section
    for error in section["errors"]:
        log(f"storage: {error}", 4)
    stage_line("storage", section["ok"], storage_detail(section))


def network_stage(cfg: BootConfig, report: dict[str, Any]) -> None:
    """Bring the network up when the command line asks for it (pxe, nfsmount=, url=, ip=,
    ipconf=, vlan=, bond=); the result goes into the report. Never fatal."""
    from initrd_composer.boot.network.plan import network_wanted  # noqa: PLC0415
    from initrd_composer.boot.network.stage import run_network  # noqa: PLC0415

    if not network_wanted(cfg):
        return
    section = run_network(cfg)
    report["network"] = section
    for problem in [*section["problems"], *section["errors"]]:
        log(f"network: {problem}", 4)
    configured = ", ".join(f"{i['interface']} {i['method']} {i['address']}" for i in section["interfaces"])
    detail = configured or "; ".join(section["errors"] or section["problems"]) or "nothing configured"
    stage_line("network", section["ok"], detail)


def media_stage(cfg: BootConfig, report: dict[str, Any]) -> Any:
    """Find the restore data the command line asks for (a restore mode always looks); the
    result goes into the report. Returns what was found, or None. Never fatal."""
    from initrd_composer.boot.media.plan import media_wanted, plan_media, timeout_of  # noqa: PLC0415

    if not media_wanted(cfg):
        return None  # a plain probe boot: the stage's code is not even imported
    from initrd_composer.boot.media.stage import run_media, stage_detail, wait_answer  # noqa: PLC0415
    from initrd_composer.boot.sources import MediaContext  # noqa: PLC0415

    plan = plan_media(cfg)
    for problem in plan.problems:
        log(f"media: {problem}", 4)
    ctx = MediaContext(cfg=cfg, timeout_s=timeout_of(cfg), log=log, network=report.get("network"))
    section, found = run_media(plan, ctx, mode=cfg.mode or "expert", ask=wait_answer, shell=run_shell)
    report["media"] = section
    stage_line("media", section["ok"], stage_detail(section))
    return found


def run_stages(cmdline: str, t_start: float) -> None:
    cfg = parse_cmdline(cmdline)
    for word in cfg.unknown:
        log(f"ignoring unknown kernel parameter {word!r}")
    for problem in cfg.problems:
        log(f"kernel parameter {problem}", 4)
    early.set_modprobe_helper()
    _fail_point(cmdline, "early")
    report = probe(cfg, cmdline, t_start)
    log(
        f"probe done: {len(report['netdevs'])} network, {len(report['blockdevs'])} block devices, "
        f"{len(report['missing'])} devices without a driver, {report['timings']['probe_end']:.2f} s uptime"
    )
    storage_stage(cfg, report)
    network_stage(cfg, report)
    found = media_stage(cfg, report)
    emit(publish(report))
    if cfg.mode == "probe":
        power("power off")
        return
    mode = cfg.mode or "expert"
    if mode in ("nuke", "interactive"):
        restore_stage(cfg, report, found)
        return
    if mode == "capture":
        capture_stage(cfg, report)
        return
    if mode == "compare":
        compare_stage(cfg, report, found)
        return
    if mode != "expert":
        log(f"mode {mode}: this image has no {mode} stage yet; starting the expert shell")
    if found is not None:
        from initrd_composer.boot.restore.stage import note_found  # noqa: PLC0415

        note_found(found, cfg.restore_set, cfg.url, log)
    run_shell("expert mode")


def restore_stage(cfg: BootConfig, report: dict[str, Any], found: Any) -> None:
    """nuke: the restore, its `restore` section and stage line, then restore_then= (a failure or
    a refusal: the shell, with the restore set still mounted)."""
    from initrd_composer.boot.restore.stage import restore_detail, run_nuke  # noqa: PLC0415

    if cfg.mode == "interactive":
        from initrd_composer.boot.interactive.stage import run_interactive  # noqa: PLC0415

        section = run_interactive(found, cfg.restore_set, log, url=cfg.url)
    else:
        section = run_nuke(found, cfg.restore_set, log, url=cfg.url, resize=not cfg.noresize,
                           in_place=cfg.nopart)
    report["restore"] = section
    stage_line("restore", section["ok"], restore_detail(section))
    emit(publish(report))
    if not section["ok"]:
        run_shell("the restore did not finish; `nuke` starts it over")
        return
    then = cfg.restore_then
    if then == "shell":
        run_shell("restore done (restore_then=shell)")
        return
    power("power off" if then == "poweroff" else "reboot")


def compare_stage(cfg: BootConfig, report: dict[str, Any], found: Any) -> None:
    """compare: the report of differences (nothing written), then the shell to read it, or
    what restore_then= asks for when it is given."""
    from initrd_composer.boot.compare.stage import COMPARE_TXT, compare_detail, run_compare  # noqa: PLC0415

    section = run_compare(found, cfg.restore_set, log, url=cfg.url)
    report["compare"] = section
    stage_line("compare", section["ok"], compare_detail(section))
    emit(publish(report))
    if not section["ok"] or cfg.restore_then in (None, "shell"):
        done = f"compare done; the report is in {COMPARE_TXT}"
        run_shell(done if section["ok"] else "the compare did not finish")
        return
    power("power off" if cfg.restore_then == "poweroff" else "reboot")


def capture_stage(cfg: BootConfig, report: dict[str, Any]) -> None:
    """capture: write a restore set of this machine's disks to capture_to=, then the shell or
    restore_then= as for a restore."""
    from initrd_composer.boot.capture_mode import run_capture_mode  # noqa: PLC0415

    section = run_capture_mode(cfg, report, log)
    report["capture"] = section
    stage_line("capture", section["ok"], str(section.get("detail") or section.get("error") or ""))
    emit(publish(report))
    if not section["ok"]:
        run_shell("the capture did not finish")
        return
    if cfg.restore_then == "shell":
        run_shell("capture done (restore_then=shell)")
        return
    power("power off" if cfg.restore_then == "poweroff" else "reboot")


def main() -> None:
    t_start = uptime()
    try:
        early.base_environment()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-Alt-Del etc. must not kill PID 1
        problems = early.mount_pseudo_filesystems()
        t_start = uptime()
        log(f"init started at {t_start:.2f} s uptime")
        for problem in problems:
            log(problem, 4)
        cmdline = _read_cmdline()
        run_stages(cmdline, t_start)
        emergency(None, "the boot stages returned")
    except BaseException as exc:  # PID 1 must never die
        emergency(exc, f"{type(exc).__name__}: {exc}")
