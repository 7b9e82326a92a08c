"""scripts/nfs_server.py, the host's NFS server for the boot tests and the benchmark: its
ganesha.conf (pure), and a real nfs-ganesha (+ rpcbind for v3) that answers RPC NULL calls
on loopback, stops cleanly, and reports a start that fails with its log's tail.
"""

from __future__ import annotations

import fcntl
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import nfs_server
from nfs_server import MOUNT_PROGRAM, NFS_PROGRAM, Export, NfsServer, NfsServerError, config_text


def test_config_is_loopback_read_only_and_graceless(tmp_path: Path) -> None:
    text = config_text([Export(tmp_path / "a", "/rescue"), Export(tmp_path / "b", "/other")], (4, 3),
                       tmp_path / "rec")  # fmt: skip
    core = text.split("NFSV4 {")[0]
    for line in ("Protocols = 3, 4;", "Bind_addr = 127.0.0.1;", "NFS_Port = 2049;", "Enable_NLM = false;",
                 "Enable_RQUOTA = false;", "Enable_UDP = false;", "Mount_Path_Pseudo = true;"):  # fmt: skip
        assert line in core, line
    assert "Graceless = true;" in text and f'RecoveryRoot = "{tmp_path / "rec"}";' in text
    exports = text.split("EXPORT {")[1:]
    assert len(exports) == 2
    assert f'Path = "{tmp_path / "a"}";' in exports[0] and 'Pseudo = "/rescue";' in exports[0]
    assert "Export_Id = 2;" in exports[1] and 'Pseudo = "/other";' in exports[1]
    for export in exports:
        for line in ("Access_Type = RO;", "Squash = No_Root_Squash;", "FSAL { Name = VFS; }"):
            assert line in export, line


@pytest.mark.parametrize(("exports", "protocols"), [
    ([], (4,)), ([Export(Path("/srv"), "rescue")], (4,)), ([Export(Path("/srv"), "/rescue")], (2,)),
])  # fmt: skip
def test_config_refuses_what_ganesha_would_misread(exports: list[Export], protocols: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        config_text(exports, protocols, Path("/tmp/rec"))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.root
@pytest.mark.xdist_group("nfs")
def test_v3_and_v4_answer_and_stop(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    server = NfsServer(tmp_path / "srv", [Export(tmp_path / "export", "/rescue")], protocols=(3, 4))
    with server:
        assert server.started_in is not None and server.started_in < 30
        for vers in (3, 4):
            nfs_server.rpc_null("127.0.0.1", 2049, NFS_PROGRAM, vers)
        port = nfs_server.pmap_getport("127.0.0.1", MOUNT_PROGRAM, 3)
        assert port > 0
        nfs_server.rpc_null("127.0.0.1", port, MOUNT_PROGRAM, 3)
        with pytest.raises(OSError, match="not accepted"):  # NFS v2 was not asked for
            nfs_server.rpc_null("127.0.0.1", 2049, NFS_PROGRAM, 2)
        server.check_alive()
    assert _port_free(2049) and _port_free(111)  # rpcbind was ours: stopped too


def test_a_server_that_dies_says_why(tmp_path: Path) -> None:
    # a stand-in for ganesha that fails as it does when it cannot bind: FATAL in its log, exit 2
    fake = tmp_path / "ganesha.nfsd"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != -L ]; do shift; done\n'
                    'echo "main :DISP :FATAL :Error binding to V6 interface. Cannot continue." >> "$2"\n'
                    "exit 2\n")
    fake.chmod(0o755)
    (tmp_path / "export").mkdir()
    server = NfsServer(tmp_path / "srv", [Export(tmp_path / "export", "/rescue")], port=12049,
                       ganesha=str(fake))  # fmt: skip
    with pytest.raises(NfsServerError) as info:
        server.start()
    message = str(info.value)
    assert "nfs-ganesha exited with status 2 while starting" in message
    assert "ganesha.log (tail)" in message and "Cannot continue" in message


def test_a_busy_port_is_refused_not_shared(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    with socket.socket() as other:  # another server holds the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = NfsServer(tmp_path / "srv", [Export(tmp_path / "export", "/rescue")], port=port,
                           port_wait=1.0, ganesha="/nonexistent/ganesha.nfsd")  # fmt: skip
        with pytest.raises(NfsServerError, match=f"127.0.0.1:{port} is in use"):
            server.start()
    (nfs_server.LOCK_DIR / f"initrd-composer-nfs-{port}.lock").unlink()  # a random port's: not kept


def test_servers_take_turns_on_the_port(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    lock = nfs_server.LOCK_DIR / "initrd-composer-nfs-12049.lock"
    with open(lock, "a+") as other:  # another process's NfsServer holds the port's lock
        fcntl.flock(other, fcntl.LOCK_EX)
        server = NfsServer(tmp_path / "srv", [Export(tmp_path / "export", "/rescue")], port=12049,
                           port_wait=1.0, ganesha="/nonexistent/ganesha.nfsd")  # fmt: skip
        with pytest.raises(NfsServerError, match=r"another nfs_server\.py"):
            server.start()
    # released: this start gets past the lock (and fails on the missing ganesha instead)
    with pytest.raises(NfsServerError, match="install nfs-ganesha"):
        server.start()


def test_ganesha_not_installed(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    server = NfsServer(tmp_path / "srv", [Export(tmp_path / "export", "/rescue")], port=12049,
                       ganesha="/nonexistent/ganesha.nfsd")  # fmt: skip
    with pytest.raises(NfsServerError, match="install nfs-ganesha nfs-ganesha-vfs"):
        server.start()


def test_a_missing_export_directory(tmp_path: Path) -> None:
    with pytest.raises(NfsServerError, match="not a directory"):
        NfsServer(tmp_path / "srv", [Export(tmp_path / "absent", "/rescue")]).start()
