"""The kernel command line as /init reads it (docs/design.md, "The kernel command line"): whole tokens,
kernel quoting, every documented parameter, and malformed values reported, never raised."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initrd_composer.boot.cmdline import (
    FLAGS,
    MODES,
    BootConfig,
    IpConf,
    parse_cmdline,
    split_cmdline,
)

# -- splitting like the kernel ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("   \n", []),
        ("console=ttyS0 nuke\n", ["console=ttyS0", "nuke"]),
        ("a\tb  c", ["a", "b", "c"]),
        ('a "b c" d', ["a", "b c", "d"]),
        ('url="http://h/a b" nuke', ["url=http://h/a b", "nuke"]),
        ('"nuke"', ["nuke"]),
        ('prefix="x  y"z', ["prefix=x  yz"]),
        ('""', [""]),
        ('a "unterminated b', ["a", "unterminated b"]),
    ],
)
def test_split_groups_quoted_words(text: str, words: list[str]) -> None:
    assert split_cmdline(text) == words


def test_a_quoted_space_does_not_split_a_parameter() -> None:
    cfg = parse_cmdline('tapedev="/dev/nst0" prefix="my backup"')
    assert cfg.tapedev == "/dev/nst0"
    assert cfg.prefix == "my backup"
    assert cfg.unknown == () and cfg.problems == ()


# -- modes and flags: whole tokens only -----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_mode(mode: str) -> None:
    cfg = parse_cmdline(f"console=ttyS0 {mode} quiet")
    assert cfg.mode == mode
    assert cfg.unknown == () and cfg.problems == ()


@pytest.mark.parametrize(
    "word", ["nukeX", "xnuke", "mynuke=1", "nuke=1", "NUKE", "nuke,probe", "pxe=1", "iso_mode2", "xobdr"]
)
def test_substrings_and_lookalikes_are_not_modes_or_flags(word: str) -> None:
    cfg = parse_cmdline(word)
    assert cfg == BootConfig(unknown=(word,))


def test_the_last_mode_wins_and_the_conflict_is_reported() -> None:
    cfg = parse_cmdline("nuke probe")
    assert cfg.mode == "probe"
    assert cfg.problems == ("probe: mode already nuke; the last one wins",)
    assert parse_cmdline("nuke nuke").problems == ()


def test_no_mode_by_default() -> None:
    assert parse_cmdline("console=ttyS0").mode is None


@pytest.mark.parametrize("flag", FLAGS)
def test_each_media_flag(flag: str) -> None:
    cfg = parse_cmdline(f"{flag} nuke")
    assert getattr(cfg, flag) is True
    others = [f for f in FLAGS if f != flag]
    assert all(getattr(cfg, f) is False for f in others)


@given(
    st.sampled_from(MODES + FLAGS),
    st.text(alphabet="abcxyz_09-", max_size=4),
    st.text(alphabet="abcxyz_09-", max_size=4),
)
@settings(max_examples=200)
def test_a_mode_or_flag_inside_another_word_never_counts(word: str, before: str, after: str) -> None:
    text = before + word + after
    cfg = parse_cmdline(text)
    if before or after:
        assert cfg.mode is None
        assert not (cfg.pxe or cfg.iso_mode or cfg.obdr or cfg.noresize)
        assert cfg.unknown == (text,)
    else:
        assert cfg.mode == word or getattr(cfg, word) is True


# -- media ---------------------------------------------------------------------------------


def test_media_parameters() -> None:
    cfg = parse_cmdline(
        "pxe prefix=mondorescue netfsmount=10.0.2.2:/export/backup nfsmount=srv:/b "
        "url=https://backup.example/images/ tapedev=/dev/nst0 obdr iso_mode"
    )
    assert cfg.pxe and cfg.obdr and cfg.iso_mode
    assert cfg.prefix == "mondorescue"
    assert cfg.netfsmount == "10.0.2.2:/export/backup"
    assert cfg.nfsmount == "srv:/b"
    assert cfg.url == "https://backup.example/images/"
    assert cfg.tapedev == "/dev/nst0"
    assert cfg.unknown == () and cfg.problems == ()
    assert parse_cmdline("url=http://10.0.2.2:8000/x").url == "http://10.0.2.2:8000/x"


@pytest.mark.parametrize(
    "word",
    [
        "prefix=",
        "prefix=a/b",
        "netfsmount=",
        "netfsmount=server",
        "netfsmount=server:path",
        "netfsmount=:/path",
        "nfsmount=srv:",
        "url=",
        "url=backup.example/x",
        "url=http://",
        "url=file:///etc/passwd",
        "url=HTTP//x",
        "tapedev=nst0",
        "tapedev=",
        "tapedev=dev/nst0",
    ],
)
def test_bad_media_values_are_reported_and_ignored(word: str) -> None:
    cfg = parse_cmdline(f"{word} nuke")
    key = word.partition("=")[0]
    assert getattr(cfg, key) is None
    assert cfg.mode == "nuke"
    assert len(cfg.problems) == 1 and cfg.problems[0].startswith(f"{word}: ")
    assert cfg.unknown == ()


# -- module lists ---------------------------------------------------------------------------


def test_module_lists_are_split_and_normalised() -> None:
    cfg = parse_cmdline("denymods=e1000e,snd-hda-intel,,nouveau forcemods=dm-mod,usb-storage")
    assert cfg.denymods == ("e1000e", "snd_hda_intel", "nouveau")
    assert cfg.forcemods == ("dm_mod", "usb_storage")
    assert parse_cmdline("denymods=").denymods == ()
    assert parse_cmdline('forcemods=" a , b-c "').forcemods == ("a", "b_c")


# -- what is not ours --------------------------------------------------------------------


def test_unknown_words_are_collected_in_order() -> None:
    cfg = parse_cmdline("frobnicate nuke foo=bar =x")
    assert cfg.unknown == ("frobnicate", "foo=bar", "=x")
    assert cfg.mode == "nuke"


def test_kernel_words_and_module_parameters_are_ignored_silently() -> None:
    text = (
        "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet console=ttyS0,115200 console=tty0 "
        "loglevel=7 rdinit=/init net.ifnames=0 e1000e.InterruptThrottleRate=1 "
        "initrd_composer.fail=probe modprobe.blacklist=nouveau mitigations=off"
    )
    assert parse_cmdline(text) == BootConfig()


def test_a_realistic_pxe_command_line() -> None:
    cfg = parse_cmdline(
        "initrd=initrd.img console=ttyS0 nuke pxe ipconf=eth0:dhcp netfsmount=10.0.2.2:/PSEUDO "
        "prefix=host1 BOOTIF=01-52-54-00-12-34-56 ping=2 denymods=floppy\n"
    )
    assert cfg == BootConfig(
        mode="nuke",
        ipconf=IpConf("eth0", True),
        bootif="52:54:00:12:34:56",
        ping=2,
        pxe=True,
        prefix="host1",
        netfsmount="10.0.2.2:/PSEUDO",
        denymods=("floppy",),
    )


# -- never raising ---------------------------------------------------------------------------

_KEYS = [
    "ipconf", "ip", "BOOTIF", "ping", "prefix", "netfsmount", "nfsmount", "url", "tapedev",
    "denymods", "forcemods", "console", "x.y", "nameserver", "vlan", "bond", *MODES, *FLAGS,
]
_word = st.one_of(
    st.text(max_size=12),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), st.text(max_size=30)),
    st.builds(
        lambda k, v: f"{k}={':'.join(v)}",
        st.sampled_from(["ip", "ipconf", "vlan", "bond"]),
        st.lists(
            st.sampled_from([
                "", "eth0", "eth0.5", "vlan0005", "10.0.2.15", "10.0.2.15/24", "255.255.255.0", "24", "dhcp",
                "off", "dhcp,dhcp6", "dhcp,1,x", "x", "1500", "52", "52-54-00-12-34-56", "[2001:db8::1]", "[",
                "mode=active-backup,miimon=100", "eth0,eth1",
            ]),
            max_size=14,
        ),
    ),
)  # fmt: skip


@given(st.text())
@settings(max_examples=300)
def test_arbitrary_text_never_raises(text: str) -> None:
    cfg = parse_cmdline(text)
    assert isinstance(cfg, BootConfig)


@given(st.lists(_word, max_size=8).map(" ".join))
@settings(max_examples=400)
def test_arbitrary_parameters_never_raise_and_every_unknown_word_is_a_word(text: str) -> None:
    cfg = parse_cmdline(text)
    words = split_cmdline(text)
    assert all(u in words for u in cfg.unknown)
    assert len(cfg.unknown) + len(cfg.problems) <= len(words)
    assert cfg.mode in (None, *MODES)
    # each ip= word gives its configurations or one problem, never both
    ip_words = [w for w in words if w.startswith("ip=")]
    ip_problems = [p for p in cfg.problems if p.startswith("ip=")]
    assert len(ip_problems) <= len(ip_words) <= len(cfg.ip) + len(ip_problems)
    for k in cfg.ip:
        assert k.method in ("dhcp", "dhcp6", "auto6", "ibft", "static", "off")
        assert (k.method == "static") <= bool(k.address)
