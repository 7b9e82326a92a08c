"""Which restore-data sources the command line asks for, in the order they are tried (pure).

MondoRescue's init runs `HandleTape | StartNfs | HandleCDROMorFloppies`; ours keeps that order
and adds HTTP: tape (`tapedev=`, `obdr`), NFS (`nfsmount=`, `netfsmount=`), HTTP (`url=`), then
the removable media found by marker. A boot without any of these words looks for the marker
(a CD/ISO or USB boot). The removable search is also what "another source" offers after a
named source failed, so a disc in the drive can stand in for an unreachable server.
"""

from __future__ import annotations

from dataclasses import dataclass

from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.sources import Choice

KINDS = ("tape", "nfs", "http", "removable")
DEFAULT_TIMEOUT_S = 30  # per attempt, unless media_timeout= says otherwise
NUKE_ATTEMPTS = 3  # nuke: each source this many times before the next, then the shell


@dataclass(frozen=True)
class MediaPlan:
    choices: tuple[Choice, ...]  # what the command line names, in order
    alternatives: tuple[Choice, ...]  # offered when those fail (never tried unasked in nuke)
    problems: tuple[str, ...] = ()


def media_wanted(cfg: BootConfig) -> bool:
    """A restore mode always looks for its data; `probe` only when a media word asks; `capture`
    writes a restore set instead (to capture_to=), so it reads none."""
    if cfg.mode == "capture":
        return False
    if cfg.mode not in (None, "probe"):
        return True
    return bool(cfg.tapedev or cfg.obdr or cfg.nfsmount or cfg.netfsmount or cfg.url or cfg.iso_mode)


def plan_media(cfg: BootConfig) -> MediaPlan:
    choices: list[Choice] = []
    problems: list[str] = []
    if cfg.tapedev or cfg.obdr:
        choices.append(Choice("tape", cfg.tapedev or "", "tapedev=" if cfg.tapedev else "obdr"))
    seen: set[str] = set()
    for word, spec in (("nfsmount=", cfg.nfsmount), ("netfsmount=", cfg.netfsmount)):
        if spec and spec not in seen:
            seen.add(spec)
            choices.append(Choice("nfs", spec, word))
    if cfg.url:
        choices.append(Choice("http", cfg.url, "url="))
    if cfg.pxe and not any(c.kind in ("nfs", "http") for c in choices):
        problems.append("pxe without nfsmount= or url=: the restore data is looked for on local media")
    if cfg.prefix and not any(c.kind == "nfs" for c in choices):
        problems.append(f"prefix={cfg.prefix} applies to an NFS share; no nfsmount= given")
    removable = Choice("removable", "", "")
    if not choices:
        return MediaPlan((removable,), (), tuple(problems))
    return MediaPlan(tuple(choices), (removable,), tuple(problems))


def timeout_of(cfg: BootConfig) -> float:
    return float(cfg.media_timeout or DEFAULT_TIMEOUT_S)
