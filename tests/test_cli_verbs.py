"""The query verbs: deps, match, explain, check (ls is in test_compose_image)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from initrd_composer.cli import main as cli
from initrd_composer.runner import run
from module_db.alias_match import AliasIndex
from module_db.kernel_modules import KernelModules
from module_db.names import name_from_path
from tests.image_fixtures import E1000_MODALIAS, E1000E_MODALIAS, IGB_MODALIAS, BuiltImage, fake_sysfs
from tests.kernel_fixtures import plain_module_name
from tests.kmod_oracle import fill_wildcards

pytest_plugins = ("tests.image_fixtures",)

JUNK_MODALIAS = "pci:v0000ABCDd00001234sv00000000sd00000000bc99sc99i99"


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 0) -> tuple[list[str], str]:
    """(stdout lines, stderr) of `compose-initrd ARGV`, which must exit with `status`."""
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def _modprobe_order(version: str, config_dir: Path, modules: list[str]) -> list[str]:
    """Modules `modprobe --show-depends` would insmod, in its order (repeats dropped:
    kmod prints a module again when a second path reaches it)."""
    argv = ["modprobe", "-C", str(config_dir), "-S", version, "--show-depends", "-a", *modules]
    lines = run(argv).stdout.decode().splitlines()
    return list(dict.fromkeys(name_from_path(ln.split()[1]) for ln in lines if ln.startswith("insmod ")))


# -- deps ------------------------------------------------------------------------------


def test_deps_prints_modprobes_load_order(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], tmp_path: Path
) -> None:
    out, err = _cli(capsys, ["deps", "--kernel", kernel[0], "ext4", "nfsv4"])
    assert out == _modprobe_order(kernel[0], tmp_path, ["ext4", "nfsv4"])
    assert out[-1] == "nfsv4" and "ext4" in out and "sunrpc" in out
    assert err == ""


def test_deps_order_agrees_with_modprobe_for_every_softdep_user(
    kernel_modules: KernelModules, kernel: tuple[str, Path], tmp_path: Path
) -> None:
    # Softdeps are where the order is subtle: kmod loads hard deps, then pre softdeps.
    km = kernel_modules
    names = [*sorted(set(km.softdeps) & set(km.deps)), "raid456", "uas", "r8169"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        oracle = dict(zip(names, pool.map(lambda n: _modprobe_order(kernel[0], tmp_path, [n]), names),
                          strict=True))
    assert len(names) > 10
    wrong = {n: (km.load_order([n]), oracle[n]) for n in names if km.load_order([n]) != oracle[n]}
    assert wrong == {}


def test_deps_of_builtin_and_unknown(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], kernel_modules: KernelModules
) -> None:
    builtin = sorted(kernel_modules.builtin - set(kernel_modules.deps))[0]
    out, err = _cli(capsys, ["deps", "--kernel", kernel[0], builtin])
    assert out == []
    assert err == f"compose-initrd: warning: {builtin} is built into kernel {kernel[0]}: nothing to load\n"
    out, err = _cli(capsys, ["deps", "--kernel", kernel[0], "ext4", "no-such-module"], status=1)
    assert out == []
    assert err.splitlines()[0] == f"compose-initrd: error: no module 'no-such-module' in kernel {kernel[0]}"


# -- match -----------------------------------------------------------------------------


def test_match_prints_modules_or_dash(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], tmp_path: Path
) -> None:
    out, _ = _cli(capsys, ["match", "--kernel", kernel[0], E1000_MODALIAS, "junk", E1000E_MODALIAS])
    assert out == [f"{E1000_MODALIAS}\te1000", "junk\t-", f"{E1000E_MODALIAS}\te1000e"]
    # kmod agrees.
    resolved = run(["modprobe", "-C", tmp_path, "-S", kernel[0], "-R", E1000_MODALIAS]).stdout.decode()
    assert resolved.split() == ["e1000"]


def test_match_lists_every_module_of_an_ambiguous_alias(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], kernel_modules: KernelModules
) -> None:
    index = AliasIndex(kernel_modules.aliases)
    modalias = next(
        q for q in (fill_wildcards(a.pattern) for a in kernel_modules.aliases if a.pattern.startswith("pci:"))
        if len(index.match(q)) > 1
    )
    out, _ = _cli(capsys, ["match", "--kernel", kernel[0], modalias])
    assert out == [f"{modalias}\t{','.join(kernel_modules.resolve(modalias))}"]
    assert "," in out[0]


# -- explain ---------------------------------------------------------------------------


def _kernel_paths(version: str, expected: dict[str, str]) -> dict[str, str]:
    """The module files explain names: the kernel's own, as `modinfo -n` finds them (.ko, or
    .ko.xz/.ko.zst/.ko.gz when the kernel ships them compressed), each checked to be the
    expected .ko once unpacked."""
    paths = {}
    for name in expected:
        found = run(["modinfo", "-k", version, "-n", name]).stdout.decode().strip()
        paths[name] = found.split(f"/modules/{version}/", 1)[1]
    assert {name: plain_module_name(p) for name, p in paths.items()} == expected
    return paths


def test_explain_class_dependency_and_builtin(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], kernel_modules: KernelModules
) -> None:
    k = kernel[0]
    path = _kernel_paths(k, {"ahci": "kernel/drivers/ata/ahci.ko",
                             "libahci": "kernel/drivers/ata/libahci.ko",
                             "mbcache": "kernel/fs/mbcache.ko"})
    out, _ = _cli(capsys, ["explain", "--kernel", k, "--all-nics", "ahci"])
    assert out == [
        f"ahci: packed: driver class storage ({path['ahci']}, class storage)",
        "ahci: loads after scsi_common, scsi_mod, libata, libahci",
    ]
    out, _ = _cli(capsys, ["explain", "--kernel", k, "--all-nics", "libahci"])
    assert out[0] == f"libahci: packed: driver class storage ({path['libahci']}, class storage)"
    out, _ = _cli(capsys, ["explain", "--kernel", k, "--all-nics", "mbcache"])
    assert out == ["mbcache: packed: pulled in by ext4 (dependency, softdep or weakdep) "
                   f"({path['mbcache']}, class none)"]
    builtin = sorted(kernel_modules.builtin - set(kernel_modules.deps))[0]
    out, _ = _cli(capsys, ["explain", "--kernel", k, builtin])
    assert out == [f"{builtin}: built into kernel {k}; never packed, always available"]
    out, _ = _cli(capsys, ["explain", "--kernel", k, "--all-nics", "snd_hda_intel"])
    assert out[0].startswith("snd_hda_intel: not packed (")
    assert out[0].endswith("class none is not packed and no packed module depends on it")


def test_explain_nics_follow_the_host(
    capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path], tmp_path: Path
) -> None:
    path = _kernel_paths(kernel[0], {"igb": "kernel/drivers/net/ethernet/intel/igb/igb.ko",
                                     "e1000": "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
                                     "hv_netvsc": "kernel/drivers/net/hyperv/hv_netvsc.ko"})
    sysfs = str(fake_sysfs(tmp_path / "sys", {"eth0": E1000_MODALIAS}))
    base = ["explain", "--kernel", kernel[0], "--sys-root", sysfs]
    out, _ = _cli(capsys, [*base, "igb"])
    assert out == [
        f"igb: not packed ({path['igb']}): "
        "class nic needs --all-nics (no host NIC uses it)"
    ]
    out, _ = _cli(capsys, [*base, "e1000"])
    assert out == ["e1000: packed: the build host's NIC eth0 uses it "
                   f"({path['e1000']}, class nic)"]
    out, _ = _cli(capsys, [*base, "--all-nics", "igb"])
    assert out[0].startswith("igb: packed: driver class nic")
    assert out[1] == "igb: loads after i2c_algo_bit, dca"
    out, _ = _cli(capsys, [*base, "--all-nics", "--omit-modules", "hv-netvsc,igb", "hv_netvsc"])
    assert out == [f"hv_netvsc: not packed ({path['hv_netvsc']}): "
                   "omitted by --omit-modules"]


def test_explain_unknown_module(capsys: pytest.CaptureFixture[str], kernel: tuple[str, Path]) -> None:
    _, err = _cli(capsys, ["explain", "--kernel", kernel[0], "no_such_module"], status=1)
    assert err.splitlines() == [
        f"compose-initrd: error: no module 'no_such_module' in kernel {kernel[0]}",
        "compose-initrd: hint: check the spelling",
    ]


# -- check -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target_modaliases(tmp_path_factory: pytest.TempPathFactory, all_nics_image: BuiltImage) -> Path:
    """A target machine's modaliases: two NICs, a device no module drives, one that a
    built-in driver handles, and the comments and blank lines a hand-made file has."""
    manifest = all_nics_image.manifest
    packed = AliasIndex(manifest.aliases)
    builtin = next(
        q for q in (fill_wildcards(a.pattern) for a in manifest.builtin_aliases) if q and not packed.match(q)
    )
    path = tmp_path_factory.mktemp("target") / "modaliases"
    path.write_text(f"# from the target\n{E1000_MODALIAS}\n\n{IGB_MODALIAS}\n{JUNK_MODALIAS}\n{builtin}\n")
    return path


def test_check_marks_driven_builtin_and_missing(
    capsys: pytest.CaptureFixture[str], all_nics_image: BuiltImage, host_nic_image: BuiltImage,
    target_modaliases: Path,
) -> None:
    builtin = target_modaliases.read_text().splitlines()[-1]
    builtin_mods = ",".join(AliasIndex(all_nics_image.manifest.builtin_aliases).match(builtin))
    out, err = _cli(capsys, ["check", str(all_nics_image.path), "--modaliases", str(target_modaliases)])
    assert out == [
        f"{E1000_MODALIAS}\tdriven\te1000",
        f"{IGB_MODALIAS}\tdriven\tigb",
        f"{JUNK_MODALIAS}\tmissing\t-",
        f"{builtin}\tbuilt-in\t{builtin_mods}",
    ]
    assert err == f"3 driven, 1 without a driver in {all_nics_image.path} (kernel {all_nics_image.version})\n"
    # The image built for an e1000 host has no igb.
    out, _ = _cli(capsys, ["check", str(host_nic_image.path), "--modaliases", str(target_modaliases)])
    assert out[:2] == [f"{E1000_MODALIAS}\tdriven\te1000", f"{IGB_MODALIAS}\tmissing\t-"]


def test_check_errors(
    capsys: pytest.CaptureFixture[str], all_nics_image: BuiltImage, target_modaliases: Path, tmp_path: Path
) -> None:
    _, err = _cli(capsys, ["check", str(all_nics_image.path), "--modaliases", str(tmp_path / "none")], 1)
    assert err.splitlines() == [
        f"compose-initrd: error: cannot read {tmp_path / 'none'}: No such file or directory",
        "compose-initrd: hint: give a file of modaliases",
    ]
    _, err = _cli(capsys, ["check", str(tmp_path / "none.img"), "--modaliases", str(target_modaliases)], 1)
    assert err.splitlines() == [
        f"compose-initrd: error: cannot read {tmp_path / 'none.img'}: No such file or directory",
        "compose-initrd: hint: check the path of the image",
    ]
    # An initrd another tool made: readable, but without our manifest.
    other = tmp_path / "other.img"
    other.write_bytes(run(["cpio", "-o", "-H", "newc", "--quiet"], input_bytes=b".\n", cwd=tmp_path).stdout)
    _, err = _cli(capsys, ["check", str(other), "--modaliases", str(target_modaliases)], 1)
    assert err.splitlines() == [
        f"compose-initrd: error: {other}: no usr/lib/initrd-composer/image.json in the image",
        "compose-initrd: hint: check reads images built by compose-initrd",
    ]
