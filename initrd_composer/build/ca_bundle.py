"""The CA certificates `url=https://...` checks servers against: the build root's bundle
(Debian's ca-certificates, with any local CA that `update-ca-certificates` added), at the
path OpenSSL looks for by default (/usr/lib/ssl/cert.pem -> /etc/ssl/certs/...)."""

from __future__ import annotations

from pathlib import Path

from initrd_composer.image.entries import Entry, file_entry, symlink_entry

BUNDLE = "etc/ssl/certs/ca-certificates.crt"
OPENSSL_DEFAULT = "usr/lib/ssl/cert.pem"


def ca_bundle_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """The bundle and OpenSSL's default-path link, or a warning when the root has none."""
    source = root / BUNDLE
    if not source.is_file():
        return [], [f"no CA bundle at {source}: url=https:// servers cannot be verified in the rescue "
                    "system (install ca-certificates)"]  # fmt: skip
    return [file_entry(BUNDLE, source, mode=0o644, origin="ca-certificates"),
            symlink_entry(OPENSSL_DEFAULT, "/" + BUNDLE, origin="ca-certificates")], []  # fmt: skip
