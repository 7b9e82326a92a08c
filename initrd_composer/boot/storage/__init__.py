"""RAID and LVM on the machine's disks: assembled and activated after probing, reported."""
