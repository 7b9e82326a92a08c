"""The versioned JSON document that joins build and boot.

Written by the composer into every image at MANIFEST_PATH; read by /init. Both
sides use this code, so the format has exactly one definition. The boot side
never parses modules.* text: everything it needs about modules is here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from module_db.errors import ModuleDbError
from module_db.index_files import AliasLine, DepEntry, SoftDep
from module_db.kernel_modules import KernelModules

SCHEMA = "initrd-composer/image"
VERSION = 1
MANIFEST_PATH = "usr/lib/initrd-composer/image.json"
# How long /init's probe waits for the device set to be quiet: after any uevent, and after
# a USB SCSI host appears (usb-storage scans it only after delay_use, 1 s, with no uevent
# between). The build writes these into every manifest's "boot"; /init falls back to them.
SETTLE_MS = 500
SCAN_SETTLE_MS = 2500
BOOT_DEFAULTS: Mapping[str, int] = {"settle_ms": SETTLE_MS, "scan_settle_ms": SCAN_SETTLE_MS}


@dataclass(frozen=True)
class PackedModule:
    name: str
    path: str  # relative to /lib/modules/KVER inside the image (always uncompressed or kept)
    deps: tuple[str, ...]
    softdep_pre: tuple[str, ...] = ()
    softdep_post: tuple[str, ...] = ()
    weakdeps: tuple[str, ...] = ()
    module_class: str | None = None
    reason: str = ""  # "class:nic", "dep:e1000e", "host-nic", "forced"
    firmware: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageManifest:
    kernel: str
    modules: Mapping[str, PackedModule]
    aliases: tuple[AliasLine, ...]
    builtin: frozenset[str]
    builtin_aliases: tuple[AliasLine, ...] = ()
    firmware_present: tuple[str, ...] = ()
    firmware_missing: tuple[str, ...] = ()
    boot: Mapping[str, Any] = field(default_factory=dict)

    def kernel_modules(self) -> KernelModules:
        """The packed subset as a KernelModules, so boot and build share resolve/load_order."""
        return KernelModules(
            version=self.kernel,
            deps={
                m.name: DepEntry(name=m.name, path=m.path, deps=m.deps)
                for m in self.modules.values()
            },
            aliases=self.aliases,
            softdeps={
                m.name: (SoftDep(m.softdep_pre, m.softdep_post),)
                for m in self.modules.values()
                if m.softdep_pre or m.softdep_post
            },
            weakdeps={m.name: m.weakdeps for m in self.modules.values() if m.weakdeps},
            builtin=self.builtin,
            builtin_aliases=self.builtin_aliases,
        )

    def to_json(self) -> str:
        doc = {
            "schema": SCHEMA,
            "version": VERSION,
            "kernel": self.kernel,
            "modules": {
                name: {
                    "path": m.path,
                    "deps": list(m.deps),
                    "softdep_pre": list(m.softdep_pre),
                    "softdep_post": list(m.softdep_post),
                    "weakdeps": list(m.weakdeps),
                    "class": m.module_class,
                    "reason": m.reason,
                    "firmware": list(m.firmware),
                }
                for name, m in sorted(self.modules.items())
            },
            "aliases": [[a.pattern, a.module] for a in self.aliases],
            "builtin": sorted(self.builtin),
            "builtin_aliases": [[a.pattern, a.module] for a in self.builtin_aliases],
            "firmware": {
                "present": list(self.firmware_present),
                "missing": list(self.firmware_missing),
            },
            "boot": dict(self.boot),
        }
        # Compact: /init parses this at every boot.
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_PATH) -> ImageManifest:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ModuleDbError(f"not valid JSON: {exc}", source) from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ModuleDbError(f"not an {SCHEMA} document", source)
        if doc.get("version") != VERSION:
            raise ModuleDbError(
                f"manifest version {doc.get('version')!r}, this code reads {VERSION}", source
            )
        try:
            modules = {
                name: PackedModule(
                    name=name,
                    path=m["path"],
                    deps=tuple(m["deps"]),
                    softdep_pre=tuple(m.get("softdep_pre", ())),
                    softdep_post=tuple(m.get("softdep_post", ())),
                    weakdeps=tuple(m.get("weakdeps", ())),
                    module_class=m.get("class"),
                    reason=m.get("reason", ""),
                    firmware=tuple(m.get("firmware", ())),
                )
                for name, m in doc["modules"].items()
            }
            fw = doc.get("firmware", {})
            return cls(
                kernel=doc["kernel"],
                modules=modules,
                aliases=tuple(AliasLine(p, m) for p, m in doc["aliases"]),
                builtin=frozenset(doc["builtin"]),
                builtin_aliases=tuple(AliasLine(p, m) for p, m in doc.get("builtin_aliases", [])),
                firmware_present=tuple(fw.get("present", ())),
                firmware_missing=tuple(fw.get("missing", ())),
                boot=doc.get("boot", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModuleDbError(f"malformed manifest: {exc!r}", source) from None
