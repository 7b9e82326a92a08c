"""The interactive restore's screen and keys (boot/interactive/menu_model.py), pure: each key's
effect on the choices and what the caller must do, and the 80x24 screen drawn from a plan."""

from __future__ import annotations

from initrd_composer.boot.interactive.menu_model import (
    HEIGHT,
    WIDTH,
    DiskRow,
    FsRow,
    Offer,
    View,
    handle,
    render,
)

OFFER = Offer(
    set_shown="http://10.0.2.2:8080/set/",
    disks=(DiskRow("vda", "virtio 6.0 GiB", "sda", "sata 8.0 GiB", "by size"),),
    filesystems=(FsRow("root", "/", "ext4", 31000, 900 << 20), FsRow("srv", "/srv", "xfs", 40, 5 << 20)),
    targets=("sda", "sdb"),
    plan_lines=tuple(f"plan line {i}" for i in range(30)),
    overwritten=("/dev/sda (sata 8.0 GiB, serial S1)",),
)


def keys(view: View, *typed: str, offer: Offer = OFFER) -> tuple[View, list[str]]:
    actions = []
    for key in typed:
        view, action = handle(view, key, offer)
        actions.append(action)
    return view, actions


def test_t_sends_the_selected_disk_to_the_next_target_and_asks_for_a_new_plan() -> None:
    view, actions = keys(View(), "t")
    assert view.choices.pinned == (("vda", "sdb"),) and actions == ["replan"]
    assert view.message == "vda -> sdb"


def test_space_leaves_a_filesystem_out_but_never_the_root() -> None:
    view, actions = keys(View(), "KEY_DOWN", " ")
    assert view.choices.left_out == frozenset() and "root filesystem is always restored" in view.message
    view, actions = keys(view, "KEY_DOWN", " ")
    assert view.choices.left_out == {"srv"} and actions == ["", "replan"]
    assert "LEFT OUT" in "\n".join(render(view, OFFER))
    view, _ = keys(view, " ")
    assert view.choices.left_out == frozenset()


def test_r_switches_between_scaled_and_saved_sizes() -> None:
    view, actions = keys(View(), "r")
    assert view.choices.resize is False and actions == ["replan"]
    assert "Sizes (r): the saved ones (noresize)" in render(view, OFFER)


def test_enter_asks_for_yes_naming_the_disks_and_only_yes_restores() -> None:
    view, actions = keys(View(), "\n")
    assert view.screen == "confirm" and actions == [""]
    screen = render(view, OFFER)
    assert "  /dev/sda (sata 8.0 GiB, serial S1)" in screen
    view, actions = keys(view, "y", "e", "\n")
    assert actions == ["", "", ""] and view.typed == "" and "type the word yes" in view.message
    view, actions = keys(view, "y", "e", "s", "\n")
    assert actions[-1] == "restore"
    back, _ = keys(view, "\x1b")
    assert back.screen == "plan" and back.message == "nothing written"


def test_a_refused_plan_is_shown_and_cannot_start() -> None:
    refused = Offer(**{**OFFER.__dict__, "refused": "cannot place source disk vda", "plan_lines": ()})
    view, actions = keys(View(), "\n", offer=refused)
    assert view.screen == "plan" and actions == [""] and "refused" in view.message
    assert render(View(), refused)[-2] == "refused: cannot place source disk vda"


def test_q_leaves_for_the_shell_and_the_screen_fits_80x24() -> None:
    assert keys(View(), "q")[1] == ["shell"]
    for view in (View(), View(screen="confirm"), View(scroll=25)):
        screen = render(view, OFFER)
        assert len(screen) == HEIGHT and all(len(line) < WIDTH for line in screen)
    first = render(View(), OFFER)
    assert first[0].startswith("initrd-composer interactive restore")
    assert first[3] == "> vda (virtio 6.0 GiB) -> sda (sata 8.0 GiB), by size"
    assert "  plan line 0" in first and "  plan line 29" not in first
    scrolled = render(View(scroll=25), OFFER)
    assert scrolled[scrolled.index("Plan (PgUp/PgDn):") + 1] == "  plan line 25"
    assert "  plan line 29" in scrolled
