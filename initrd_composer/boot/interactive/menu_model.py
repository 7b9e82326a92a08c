"""`interactive`: what the console UI shows and what each key does (pure, no curses).

MondoRescue's interactive mode is a mountlist editor; ReaR's a migration dialog. Here one
screen shows the restore set, each saved disk and the target disk it goes to, each
filesystem (restored or left out), the size policy and the whole plan; keys change the
mapping, the sizes and what is restored, each change planned again at once (a refusal is
shown in place, and Enter does nothing until the plan is good). Enter asks for the word
`yes` on a screen naming every disk to be overwritten. 80x24, keyboard only.

`handle(view, key, offer)` returns the next view and what the caller must do ("replan",
"restore", "shell" or ""); `render(view, offer)` the 24 lines to draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from initrd_composer.boot.restore.model import human_bytes

WIDTH, HEIGHT = 80, 24
KEYS_LINE = "up/down: select  t: target disk  space: leave out  r: sizes  enter: restore  q: shell"


@dataclass(frozen=True)
class Choices:
    """What the person at the console changed; the stage plans with these."""

    pinned: tuple[tuple[str, str], ...] = ()  # (source disk, target disk) chosen here
    resize: bool = True
    left_out: frozenset[str] = frozenset()  # archive names not restored


@dataclass(frozen=True)
class FsRow:
    archive: str
    mount: str
    fs_type: str
    files: int
    size_bytes: int


@dataclass(frozen=True)
class DiskRow:
    source: str  # vda
    source_text: str  # "virtio 6.0 GiB"
    target: str  # "" when the plan is refused
    target_text: str
    reason: str


@dataclass(frozen=True)
class Offer:
    """The current plan, as the stage made it from the set and Choices."""

    set_shown: str
    disks: tuple[DiskRow, ...]
    filesystems: tuple[FsRow, ...]
    targets: tuple[str, ...]  # the target disks that may be written, by name
    plan_lines: tuple[str, ...]  # plan_text.plan_lines, or the refusal's lines
    refused: str = ""  # the refusal's message: nothing can start
    overwritten: tuple[str, ...] = ()  # "/dev/sda (sata 8.0 GiB, serial X)"


@dataclass(frozen=True)
class View:
    choices: Choices = field(default_factory=Choices)
    screen: str = "plan"  # plan, confirm
    cursor: int = 0  # over the disk rows, then the filesystem rows
    scroll: int = 0  # of the plan lines
    typed: str = ""  # on the confirm screen
    message: str = ""


def _rows(offer: Offer) -> int:
    return len(offer.disks) + len(offer.filesystems)


def _next_target(view: View, offer: Offer, row: DiskRow) -> View:
    """The next writable target disk for the disk under the cursor, in name order."""
    if not offer.targets:
        return replace(view, message="no target disk may be written")
    current = row.target or dict(view.choices.pinned).get(row.source, "")
    names = list(offer.targets)
    following = names[(names.index(current) + 1) % len(names)] if current in names else names[0]
    pinned = dict(view.choices.pinned)
    pinned[row.source] = following
    choices = replace(view.choices, pinned=tuple(sorted(pinned.items())))
    return replace(view, choices=choices, message=f"{row.source} -> {following}")


def _toggle_left_out(view: View, fs: FsRow) -> View:
    if fs.mount == "/":
        return replace(view, message="the root filesystem is always restored: the system boots from it")
    left = set(view.choices.left_out)
    left.symmetric_difference_update({fs.archive})
    said = f"{fs.mount} left out: made empty" if fs.archive in left else f"{fs.mount} restored"
    return replace(view, choices=replace(view.choices, left_out=frozenset(left)), message=said)


def _plan_key(view: View, key: str, offer: Offer) -> tuple[View, str]:
    rows = _rows(offer)
    if key == "KEY_UP":
        return replace(view, cursor=max(0, view.cursor - 1), message=""), ""
    if key == "KEY_DOWN":
        return replace(view, cursor=min(max(rows - 1, 0), view.cursor + 1), message=""), ""
    if key == "KEY_NPAGE":
        return replace(view, scroll=min(view.scroll + 5, max(len(offer.plan_lines) - 1, 0))), ""
    if key == "KEY_PPAGE":
        return replace(view, scroll=max(view.scroll - 5, 0)), ""
    if key in ("q", "Q"):
        return view, "shell"
    if key in ("r", "R"):
        resize = not view.choices.resize
        said = "sizes: scaled to the new disks" if resize else "sizes: the saved ones (noresize)"
        return replace(view, choices=replace(view.choices, resize=resize), message=said), "replan"
    on_disk = view.cursor < len(offer.disks)
    if key in ("t", "T"):
        if not on_disk:
            return replace(view, message="select a disk row (up/down) to choose its target disk"), ""
        return _next_target(view, offer, offer.disks[view.cursor]), "replan"
    if key == " ":
        if on_disk:
            return replace(view, message="select a filesystem row to leave it out"), ""
        return _toggle_left_out(view, offer.filesystems[view.cursor - len(offer.disks)]), "replan"
    if key in ("\n", "\r", "KEY_ENTER"):
        if offer.refused:
            return replace(view, message="the plan is refused: change it first (see the plan)"), ""
        return replace(view, screen="confirm", typed="", message=""), ""
    return view, ""


def _confirm_key(view: View, key: str) -> tuple[View, str]:
    if key in ("\x1b", "KEY_EXIT"):
        return replace(view, screen="plan", typed="", message="nothing written"), ""
    if key in ("\n", "\r", "KEY_ENTER"):
        if view.typed == "yes":
            return view, "restore"
        return replace(view, typed="", message="type the word yes, or Esc to go back"), ""
    if key in ("KEY_BACKSPACE", "\x7f", "\b"):
        return replace(view, typed=view.typed[:-1]), ""
    if len(key) == 1 and key.isprintable() and len(view.typed) < 10:
        return replace(view, typed=view.typed + key), ""
    return view, ""


def handle(view: View, key: str, offer: Offer) -> tuple[View, str]:
    """The view after `key` (curses key names: "KEY_UP", or the character typed) and what the
    caller does next: "replan" (Choices changed), "restore", "shell" or ""."""
    if view.screen == "confirm":
        return _confirm_key(view, key)
    return _plan_key(view, key, offer)


def _fit(text: str) -> str:
    return text if len(text) <= WIDTH - 1 else text[: WIDTH - 4] + "..."


def _plan_screen(view: View, offer: Offer) -> list[str]:
    lines = [f"initrd-composer interactive restore   set {offer.set_shown}", "", "Disks (t: target disk)"]
    for i, d in enumerate(offer.disks):
        mark = ">" if view.cursor == i else " "
        goes = f"{d.target} ({d.target_text}), {d.reason}" if d.target else "(no target disk)"
        lines.append(f"{mark} {d.source} ({d.source_text}) -> {goes}")
    lines.append("Filesystems (space: leave out / restore)")
    for j, fs in enumerate(offer.filesystems):
        mark = ">" if view.cursor == len(offer.disks) + j else " "
        state = "LEFT OUT" if fs.archive in view.choices.left_out else "restore"
        size = human_bytes(fs.size_bytes)
        lines.append(f"{mark} {fs.mount:<12} {fs.fs_type:<6} {fs.files:>7} files {size:>10}  {state}")
    sizes = "scaled to the new disks" if view.choices.resize else "the saved ones (noresize)"
    lines.append(f"Sizes (r): {sizes}")
    lines.append("Plan (PgUp/PgDn):")
    room = HEIGHT - 2 - len(lines)
    lines.extend("  " + line for line in offer.plan_lines[view.scroll : view.scroll + max(room, 0)])
    return lines


def _confirm_screen(view: View, offer: Offer) -> list[str]:
    lines = ["initrd-composer interactive restore: confirm", "", "Every byte of these disks is overwritten:"]
    lines.extend(f"  {disk}" for disk in offer.overwritten)
    left = sorted(fs.mount for fs in offer.filesystems if fs.archive in view.choices.left_out)
    if left:
        lines.append(f"Left out (made empty): {', '.join(left)}")
    lines += ["", f"Type yes and Enter to restore, Esc to go back: {view.typed}"]
    return lines


def render(view: View, offer: Offer) -> list[str]:
    """Exactly HEIGHT lines, none wider than WIDTH - 1 (the last column of the last line
    would scroll the screen)."""
    body = _confirm_screen(view, offer) if view.screen == "confirm" else _plan_screen(view, offer)
    message = view.message or (f"refused: {offer.refused}" if offer.refused else "")
    keys = KEYS_LINE if view.screen == "plan" else "yes + enter: restore   esc: back"
    lines = [*body[: HEIGHT - 2]]
    lines += [""] * (HEIGHT - 2 - len(lines))
    return [_fit(line) for line in (*lines, message, keys)]
