"""The saved machine's device names on the new one (pure): which /dev path each saved disk
and partition now has, and those paths rewritten in the restored system's text files
(fstab, crypttab, grub.cfg, /etc/default/grub).

Only whole-token /dev paths change: `/dev/vda2` (also inside `root=/dev/vda2` or quotes) but
not `/dev/vda20` or `/mnt/dev/vda2`; GRUB's own disk names (`hd0,gpt2`) are no device paths
and stay. md arrays and LVM volumes keep their names (`/dev/md0`, `/dev/vg0/root`), as do
UUID= and LABEL= references, which the restore recreates as they were. All names are
replaced in one pass, so two disks that swap names cannot be rewritten twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from initrd_composer.boot.restore.sizing import RestorePlan, partition_name


def device_map(plan: RestorePlan) -> dict[str, str]:
    """Saved path -> new path of every planned disk and its partitions:
    /dev/vda -> /dev/nvme0n1, /dev/vda2 -> /dev/nvme0n1p2."""
    mapping = {}
    for disk in plan.disks:
        src, target = disk.assignment.source.name, disk.assignment.target.name
        mapping[f"/dev/{src}"] = f"/dev/{target}"
        for part in disk.partitions:
            new = partition_name(target, part.number)
            mapping[f"/dev/{partition_name(src, part.number)}"] = f"/dev/{new}"
    return mapping


def _pattern(names: list[str]) -> re.Pattern[str]:
    # Longest first, so /dev/sda1 wins over /dev/sda; no path character before, no name
    # character after (a "." ending a sentence is fine, "/dev/sda1.bak" is another name).
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w./-])({alternatives})(?![\w-]|\.\w)")


def rewrite_device_names(text: str, mapping: Mapping[str, str]) -> tuple[str, list[str]]:
    """`text` with every saved device path replaced by its new one, and the changes as
    "line N: old -> new"; comments, spacing and line ends stay as they were."""
    changed = {old: new for old, new in mapping.items() if old != new}
    if not changed:
        return text, []
    pattern = _pattern(list(changed))
    changes: list[str] = []
    lines = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):

        def swap(m: re.Match[str], number: int = number) -> str:
            changes.append(f"line {number}: {m.group(1)} -> {changed[m.group(1)]}")
            return changed[m.group(1)]

        lines.append(pattern.sub(swap, line))
    return "".join(lines), changes
