"""The media stage: find the restore data (tape | NFS | HTTP | CD-ROM/USB) after probing and
the network, the same way whether the kernel came over PXE or from a disc.

`plan` decides from the command line which sources to try (pure); `stage` runs their finders
(`initrd_composer.boot.sources`) with bounded retries, builds the report's `media` section and,
where a person may be at the console, offers retry / another source / a shell.
"""
