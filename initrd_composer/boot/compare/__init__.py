"""The `compare` boot mode: a machine's disks against a restore set, read-only."""
