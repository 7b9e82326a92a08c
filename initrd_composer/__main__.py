"""python -m initrd_composer: the compose-initrd command."""

from initrd_composer.cli.main import entry

entry()
