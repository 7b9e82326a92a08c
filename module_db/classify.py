"""Driver classes by where a module lives in the kernel tree.

The tree is the kernel's own taxonomy, so classes follow it: a module's path in
modules.dep decides its class. Rules are checked in order; exact files first,
so `st.ko` is a tape driver although it sits in drivers/scsi.
"""

from __future__ import annotations

from collections.abc import Mapping

from module_db.index_files import DepEntry

# (class, directory under kernel/ ending in '/', or an exact module file). A file rule
# beats a directory rule; a deeper directory beats a shallower one.
CLASS_RULES: tuple[tuple[str, str], ...] = (
    # Tape drives, changers and the generic SCSI node tape tools (mtx, sg_*) use.
    ("tape", "drivers/scsi/st.ko"),
    ("tape", "drivers/scsi/ch.ko"),
    ("tape", "drivers/scsi/sg.ko"),
    ("tape", "drivers/scsi/osst.ko"),
    # Wired network: NIC drivers, USB NICs, virtual NICs, PHY/MDIO/PCS glue.
    ("nic", "drivers/net/ethernet/"),
    ("nic", "drivers/net/usb/"),
    ("nic", "drivers/net/phy/"),
    ("nic", "drivers/net/mdio/"),
    ("nic", "drivers/net/pcs/"),
    ("nic", "drivers/net/hyperv/"),
    ("nic", "drivers/net/vmxnet3/"),
    ("nic", "drivers/net/fddi/"),
    ("nic", "drivers/net/virtio_net.ko"),
    ("nic", "drivers/net/xen-netfront.ko"),
    ("nic", "drivers/net/mii.ko"),
    ("nic", "drivers/net/mdio.ko"),
    ("nic", "drivers/net/net_failover.ko"),
    ("nic", "drivers/net/thunderbolt-net.ko"),  # the NIC of a Thunderbolt dock or cable
    # Tagged and bonded links, which servers' backup networks often are (vlan=, bond=).
    ("nic", "drivers/net/bonding/"),
    ("nic", "drivers/net/team/"),
    ("nic", "net/8021q/"),
    # Storage: disks, HBAs, RAID/LVM, flash, USB mass storage, paravirtual.
    ("storage", "drivers/ata/"),
    ("storage", "drivers/scsi/"),
    ("storage", "drivers/message/fusion/"),
    ("storage", "drivers/nvme/host/"),
    ("storage", "drivers/nvme/common/"),
    ("storage", "drivers/block/"),
    ("storage", "drivers/md/"),
    ("storage", "drivers/mmc/"),
    ("storage", "drivers/memstick/"),
    ("storage", "drivers/ufs/"),
    ("storage", "drivers/cdrom/"),
    ("storage", "drivers/usb/storage/"),
    ("storage", "drivers/firewire/"),
    ("storage", "drivers/nvdimm/"),
    ("storage", "drivers/pci/controller/"),  # vmd: NVMe behind Intel VMD
    # Paravirtual buses the storage and NIC front-ends sit on.
    ("virt", "drivers/virtio/"),
    ("virt", "drivers/hv/"),
    ("virt", "drivers/xen/"),
    ("virt", "drivers/vdpa/"),
    # USB host controllers; HID and keyboards for interactive restores.
    ("usb-host", "drivers/usb/host/"),
    ("usb-host", "drivers/usb/core/"),
    ("usb-host", "drivers/usb/common/"),
    ("usb-host", "drivers/usb/misc/"),
    ("usb-host", "drivers/usb/typec/"),
    ("usb-host", "drivers/usb/phy/"),
    ("hid", "drivers/hid/"),
    ("hid", "drivers/input/keyboard/"),
    ("hid", "drivers/input/serio/"),
    # Buses and glue a laptop keyboard or an SoC's disk controller sits behind.
    ("platform", "drivers/i2c/busses/"),
    ("platform", "drivers/i2c/muxes/"),
    ("platform", "drivers/mfd/"),
    ("platform", "drivers/pinctrl/"),
    ("platform", "drivers/gpio/"),
    ("platform", "drivers/spi/"),
    ("platform", "drivers/bus/"),
    ("platform", "drivers/phy/"),
    ("platform", "drivers/dma/"),
    ("platform", "drivers/thunderbolt/"),  # docks: their NICs and disks sit behind it
    ("platform", "drivers/base/regmap/"),
    ("platform", "drivers/video/backlight/"),  # a laptop panel dark without it
    # Filesystems a restore reads or writes, and what NFS needs.
    ("fs", "fs/isofs/"),
    ("fs", "fs/udf/"),
    ("fs", "fs/nfs/"),
    ("fs", "fs/nfs_common/"),
    ("fs", "fs/lockd/"),
    ("fs", "fs/ext4/"),
    ("fs", "fs/jbd2/"),
    ("fs", "fs/xfs/"),
    ("fs", "fs/btrfs/"),
    ("fs", "fs/fat/"),
    ("fs", "fs/exfat/"),
    ("fs", "fs/ntfs3/"),
    ("fs", "fs/squashfs/"),
    ("fs", "fs/overlayfs/"),
    ("fs", "fs/f2fs/"),
    ("fs", "fs/jfs/"),
    ("fs", "fs/reiserfs/"),
    ("fs", "fs/nls/"),
    ("fs", "fs/fuse/"),
    ("fs", "net/sunrpc/"),
    ("fs", "fs/efivarfs/"),
)

ALL_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(c for c, _ in CLASS_RULES))


_FILE_RULES = {rule: cls for cls, rule in reversed(CLASS_RULES) if not rule.endswith("/")}
_DIR_RULES = {rule.rstrip("/"): cls for cls, rule in reversed(CLASS_RULES) if rule.endswith("/")}


def class_of_path(path: str) -> str | None:
    """Class of a module by its modules.dep path ('kernel/drivers/ata/ahci.ko.xz'):
    an exact file rule, else the rule of the deepest directory that has one."""
    rel = path[len("kernel/") :] if path.startswith("kernel/") else path
    for suffix in (".xz", ".zst", ".gz"):
        rel = rel.removesuffix(suffix)
    cls = _FILE_RULES.get(rel)
    if cls is not None:
        return cls
    parent = rel
    while "/" in parent:
        parent = parent.rsplit("/", 1)[0]
        cls = _DIR_RULES.get(parent)
        if cls is not None:
            return cls
    return None


def classify(deps: Mapping[str, DepEntry]) -> dict[str, str]:
    """module name -> class, for every module that has one."""
    out: dict[str, str] = {}
    for name, entry in deps.items():
        cls = class_of_path(entry.path)
        if cls is not None:
            out[name] = cls
    return out
