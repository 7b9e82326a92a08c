"""The target kernel's build configuration: can it unpack the initrd we are about to write?

A kernel only decompresses initrds in the formats it was built for (CONFIG_RD_*), and
silently boots without one otherwise, so a mismatch must stop the build, not the boot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.errors import ComposeError

# The option that lets the kernel decompress each initrd compression.
RD_OPTIONS = {
    "gzip": "CONFIG_RD_GZIP",
    "bzip2": "CONFIG_RD_BZIP2",
    "lzma": "CONFIG_RD_LZMA",
    "xz": "CONFIG_RD_XZ",
    "lzo": "CONFIG_RD_LZO",
    "lz4": "CONFIG_RD_LZ4",
    "zstd": "CONFIG_RD_ZSTD",
}
# What --compress offers, in the order a hint suggests them.
_OFFERED = ("zstd", "xz", "gzip", "none")

_SET = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")


@dataclass(frozen=True)
class KernelConfig:
    """A parsed .config: option name (with CONFIG_ prefix) -> value ('y', 'm', a string
    without its quotes, a number, or 'n' for '# ... is not set')."""

    kernel: str
    path: Path
    options: Mapping[str, str]

    def enabled(self, option: str) -> bool:
        return self.options.get(option, "n") in ("y", "m")


def parse_kernel_config(text: str) -> dict[str, str]:
    """Options of a kernel .config; comments and blank lines are skipped."""
    options: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if match := _SET.fullmatch(line):
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            options[match.group(1)] = value
        elif match := _UNSET.fullmatch(line):
            options[match.group(1)] = "n"
    return options


def kernel_config_candidates(
    kernel: str, modules_dir: Path | None = None, root: Path = Path("/")
) -> list[Path]:
    """Where a kernel's .config may be, most usual first: /boot/config-KVER under `root`,
    then the build tree and a `config` file of a modules directory."""
    candidates = [root / "boot" / f"config-{kernel}"]
    if modules_dir is not None:
        candidates += [modules_dir / "build" / ".config", modules_dir / "config"]
    return candidates


def load_kernel_config(
    kernel: str, modules_dir: Path | None = None, root: Path = Path("/")
) -> KernelConfig | None:
    """The first config found among `kernel_config_candidates`, or None when there is none."""
    for path in kernel_config_candidates(kernel, modules_dir, root):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ComposeError(f"cannot read {path}: {exc.strerror}") from exc
        return KernelConfig(kernel=kernel, path=path, options=parse_kernel_config(text))
    return None


def check_compressor(config: KernelConfig | None, name: str, kernel: str = "") -> str | None:
    """Refuse a compression the kernel cannot unpack.

    Raises ComposeError when the config says the kernel lacks initrd support or the
    decompressor for `name`. Returns a warning for the caller to show when there is no
    config to check against, else None.
    """
    if config is None:
        which = f"kernel {kernel}" if kernel else "the kernel"
        return f"no .config found for {which}: cannot check that it decompresses {name} initrds"
    if name != "none" and name not in RD_OPTIONS:
        raise ValueError(f"unknown compression {name!r}")
    if not config.enabled("CONFIG_BLK_DEV_INITRD"):
        raise ComposeError(
            f"kernel {config.kernel} cannot load an initrd: CONFIG_BLK_DEV_INITRD is not set "
            f"(per {config.path})",
            "build for a kernel with initramfs support",
        )
    if name == "none" or config.enabled(RD_OPTIONS[name]):
        return None
    usable = [c for c in _OFFERED if c == "none" or config.enabled(RD_OPTIONS[c])]
    raise ComposeError(
        f"kernel {config.kernel} cannot decompress {name} initrds: {RD_OPTIONS[name]} "
        f"is not set (per {config.path})",
        f"choose --compress {'|'.join(usable)}",
    )
