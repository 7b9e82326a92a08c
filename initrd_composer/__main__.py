"""python -m initrd_composer: the compose-initrd command."""

from initrd_composer.cli import entry

entry()
