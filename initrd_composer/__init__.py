"""initrd-composer: one rescue initrd with every driver and a probing Python /init.

This package is imported inside the image too (by initrd_composer.boot), so it
must stay free of imports: the host side lives in its submodules.
"""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.2.0"
