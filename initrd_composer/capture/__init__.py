"""The host side of "capture": turn a machine's filesystems into a restore set.

- `archive_write`: one filesystem tree -> one pax+zstd archive and its manifest records;
- `set_writer`: several trees -> a set directory, the manifest written last;
- `layout`: the disks, partitions, RAID, LVM, filesystems and bootloader as `layout.json`.

The format and its reader live on the boot side, in `initrd_composer.boot.restore_set`.
"""
