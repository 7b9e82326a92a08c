"""The CA bundle url=https:// verifies servers with: packed from the build root at OpenSSL's
default path, or a warning naming what to install."""

from __future__ import annotations

from pathlib import Path

from initrd_composer.build.ca_bundle import BUNDLE, OPENSSL_DEFAULT, ca_bundle_entries
from tests.image_fixtures import BuiltImage

pytest_plugins = ("tests.image_fixtures",)


def test_bundle_and_openssl_default_link(tmp_path: Path) -> None:
    (tmp_path / BUNDLE).parent.mkdir(parents=True)
    (tmp_path / BUNDLE).write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    entries, warnings = ca_bundle_entries(tmp_path)
    assert warnings == []
    assert [(e.path, e.kind) for e in entries] == [(BUNDLE, "file"), (OPENSSL_DEFAULT, "symlink")]
    assert entries[1].target == "/" + BUNDLE and entries[0].mode == 0o644


def test_a_root_without_ca_certificates_is_a_warning(tmp_path: Path) -> None:
    entries, warnings = ca_bundle_entries(tmp_path)
    assert entries == [] and len(warnings) == 1 and "install ca-certificates" in warnings[0]


def test_the_headline_image_carries_the_hosts_bundle(all_nics_image: BuiltImage) -> None:
    image = all_nics_image.parsed()
    assert image.read(BUNDLE) == (Path("/") / BUNDLE).read_bytes()
    assert image.member(OPENSSL_DEFAULT).target == "/" + BUNDLE
