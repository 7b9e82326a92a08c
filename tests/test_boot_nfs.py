"""The NFS source in real boots: the --all-nics image on QEMU's user network mounts an export
that nfs-ganesha serves on the host's loopback (the guest's 10.0.2.2), and the report's
`media` section and the `stage: media` line say what it found.

- NFSv4 (4.2 against ganesha 4.3), the share itself holding the data;
- NFSv3 against a ganesha that speaks only v3 (the v4 attempts are refused, MOUNT is found
  through a private rpcbind);
- `iso_mode prefix=rescue`: rescue-1.iso on the share, loop-mounted, its tree the data;
- an export that does not exist: export-missing, and the boot still reaches the report;
- a server that starts only after /init first asked: waited for;
- a real PXE boot (SeaBIOS, iPXE ROM, pxelinux over slirp's TFTP) of the tree the `pxe` verb
  writes, whose /init mounts the same export.

One ganesha can own port 2049 at a time: these tests share xdist_group("nfs") and each
starts (0.1-0.3 s) and stops its own server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage, compose

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import nfs_server
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("nfs")]

MAC = "52:54:00:12:34:70"
SPEC = "10.0.2.2:/rescue"
MARKER = "RESTORE-MARKER"
ISO_MARKER = "INSIDE-THE-ISO"
NFS_MP = "/run/initrd-composer/media/nfs"
ISO_MP = "/run/initrd-composer/media/iso"
TIMEOUT_S = 150.0
PORT_WAIT_S = 900.0  # the benchmark or a restore test (another xdist group) may hold port 2049 a while


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported directory: a marker file, and rescue-1.iso holding another."""
    base = tmp_path_factory.mktemp("nfs")
    tree = base / "iso-tree"
    (tree / "data").mkdir(parents=True)
    (tree / ISO_MARKER).write_text("on the ISO\n")
    (tree / "data" / "set.tar").write_bytes(b"\0" * 10240)
    exported = base / "export"
    exported.mkdir()
    (exported / MARKER).write_text("on the share\n")
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "RESCUE", "-r", "-J",
         "-o", exported / "rescue-1.iso", tree])  # fmt: skip
    return exported


@contextmanager
def serving(share: Path, workdir: Path, protocols: Sequence[int] = (4,)) -> Iterator[nfs_server.NfsServer]:
    exports = [nfs_server.Export(share, "/rescue")]
    with nfs_server.NfsServer(workdir, exports, protocols=protocols, port_wait=PORT_WAIT_S) as server:
        yield server
        server.check_alive()  # it served the boot to the end


def _net(**user: str) -> list[str]:
    opts = "".join(f",{k}={v}" for k, v in user.items())
    return ["-netdev", f"user,id=n0{opts}", "-device", f"e1000,netdev=n0,mac={MAC},bootindex=1"]


def _report(result: qemu_boot.BootResult) -> dict[str, Any]:
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report


def _boot(image: BuiltImage, words: str, **kw: Any) -> tuple[dict[str, Any], list[str]]:
    vmlinuz = Path(f"/boot/vmlinuz-{image.version}")
    result = qemu_boot.boot(vmlinuz, image.path, f"console=ttyS0 probe ip=dhcp {words}", _net(),
                            timeout=TIMEOUT_S, **kw)  # fmt: skip
    return _report(result), list(result.lines)


def _stage_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("stage: media "))


def _check_share(media: dict[str, Any], lines: list[str], path: str = NFS_MP) -> None:
    assert media["ok"], media
    assert (media["kind"], media["source"], media["path"]) == ("nfs", SPEC, path), media
    assert (media["data"]["server"], media["data"]["export"]) == ("10.0.2.2", "/rescue")
    assert _stage_line(lines) == f"stage: media ok nfs {SPEC} at {path}"


def test_nfs4_mounts_the_export(all_nics_image: BuiltImage, share: Path, tmp_path: Path) -> None:
    with serving(share, tmp_path / "srv"):
        report, lines = _boot(all_nics_image, f"nfsmount={SPEC}")
    media = report["media"]
    _check_share(media, lines)
    data = media["data"]
    assert data["version"] == "4.2" and data["tried"] == [], data  # ganesha 4.3 speaks 4.2
    assert data["options"] == "vers=4.2,addr=10.0.2.2,clientaddr=10.0.2.15"
    assert data["listing"] == sorted([MARKER, "rescue-1.iso"]) and data["entries"] == 2
    print(f"nfs v4: media stage {media['seconds']} s, boot {report['timings']}")


def test_nfs3_when_the_server_speaks_only_v3(all_nics_image: BuiltImage, share: Path, tmp_path: Path) -> None:
    with serving(share, tmp_path / "srv", protocols=(3,)):
        report, lines = _boot(all_nics_image, f"nfsmount={SPEC}")
    media = report["media"]
    _check_share(media, lines)
    data = media["data"]
    assert data["version"] == "3", data
    assert data["options"] == "nfsvers=3,nolock,addr=10.0.2.2,mountaddr=10.0.2.2,proto=tcp,mountproto=tcp"
    assert [t.split(":")[0] for t in data["tried"]] == ["vers=4.2", "vers=4.1", "vers=4.0"], data
    assert MARKER in data["listing"]
    print(f"nfs v3: media stage {media['seconds']} s")


def test_iso_mode_loop_mounts_the_image_on_the_share(all_nics_image: BuiltImage, share: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    with serving(share, tmp_path / "srv"):
        report, lines = _boot(all_nics_image, f"nfsmount={SPEC} iso_mode prefix=rescue")
    media = report["media"]
    _check_share(media, lines, ISO_MP)
    data = media["data"]
    assert (data["iso"], data["version"]) == ("rescue-1.iso", "4.2"), data
    assert data["loop"].startswith("/dev/loop"), data
    assert data["listing"] == sorted([ISO_MARKER, "data"]), data  # the ISO's tree, not the share's
    print(f"nfs v4 + iso: media stage {media['seconds']} s")


def test_a_missing_export_is_reported_and_the_boot_goes_on(all_nics_image: BuiltImage, share: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    with serving(share, tmp_path / "srv"):
        report, lines = _boot(all_nics_image, "nfsmount=10.0.2.2:/no-such-export")
    media = report["media"]
    assert (media["ok"], media["kind"], media["reason"]) == (False, "nfs", "export-missing"), media
    assert "no such export" in media["error"] and "vers=4.2: No such file or directory" in media["error"]
    assert media["hint"] and media["path"] is None
    assert _stage_line(lines).startswith("stage: media failed nfs 10.0.2.2:/no-such-export: no such export")
    assert report["netdevs"] and report["network"]["ok"]  # the rest of the report is there


def test_a_server_that_starts_late_is_waited_for(all_nics_image: BuiltImage, share: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    exports = [nfs_server.Export(share, "/rescue")]
    server = nfs_server.NfsServer(tmp_path / "srv", exports, port_wait=PORT_WAIT_S)
    server.reserve()  # the port is ours, and nobody serves it until the guest has asked
    waiting: list[str] = []

    def start_when_asked(line: str) -> None:  # the first refusal starts the server
        if "trying again" in line and not waiting:
            waiting.append(line)
            server.start()

    try:
        report, lines = _boot(all_nics_image, f"nfsmount={SPEC}", on_line=start_when_asked)
    finally:
        server.stop()
    assert waiting and "port 2049 not answering (Connection refused)" in waiting[0], waiting
    media = report["media"]
    _check_share(media, lines)
    assert media["attempts"][0]["ok"] and len(media["attempts"]) == 1  # one finder call, waiting inside


def test_pxe_boot_mounts_the_export(all_nics_image: BuiltImage, share: Path, tmp_path: Path,
                                    build_cache: Path) -> None:  # fmt: skip
    """pxelinux over slirp's TFTP boots the image the `pxe` verb placed; its entry carries
    `pxe nfsmount=` (and BOOTIF=), and /init mounts the export as in a direct boot."""
    tree = tmp_path / "tftp"
    argv = ["pxe", "-o", str(tree), "--initrd", str(all_nics_image.path), "--default-mode", "probe",
            "--timeout", "1", "--nfs", SPEC, "--ipconf", "eth0:dhcp"]  # fmt: skip
    assert compose(argv, build_cache) == 0
    with serving(share, tmp_path / "srv"):
        result = qemu_boot.boot_firmware(_net(tftp=str(tree), bootfile="pxelinux.0"), timeout=TIMEOUT_S)
    report = _report(result)
    assert report["cmdline"]["params"]["pxe"] is True and report["cmdline"]["params"]["nfsmount"] == SPEC
    media = report["media"]
    _check_share(media, list(result.lines))
    assert media["data"]["version"] == "4.2" and MARKER in media["data"]["listing"]
    print(f"pxe + nfs v4: hwreport after {result.elapsed:.1f} s, media stage {media['seconds']} s")
