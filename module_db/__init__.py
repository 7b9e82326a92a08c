"""Kernel-module knowledge shared by the build host and the boot side.

Standard library only: this package is packed into every image and imported by
/init. Parsers take text or bytes and return frozen dataclasses; nothing here
runs a subprocess or reads a file it was not handed.
"""

from module_db.errors import ModuleDbError

__all__ = ["ModuleDbError"]
