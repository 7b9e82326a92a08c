"""The boot side: /init and its stages. Runs inside the image as PID 1.

Imports only the standard library, pyudev, libarchive-c and module_db; never the
host side of initrd_composer.
"""
