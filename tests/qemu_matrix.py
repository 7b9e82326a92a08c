"""Every NIC and storage controller QEMU 7.2 emulates on PCI and USB, as boot groups.

Several models share one boot (distinct MACs and disk sizes tell them apart), so the
matrix costs a handful of TCG boots, while each model is still asserted on its own.
Models the project cannot test this way are listed in NOT_TESTED with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 2**20


@dataclass(frozen=True)
class Nic:
    model: str  # qemu -device name
    driver: str  # the kernel driver that must end up bound (sysfs name)
    usb_host: str = ""  # for USB NICs: the host controller to put it behind


@dataclass(frozen=True)
class Storage:
    model: str  # qemu controller (or USB device) name
    driver: str  # controller driver that must serve the disk (sysfs name)
    disk_mib: int  # unique per boot: tells the disks apart in the report
    cdrom: bool = False  # also attach a CD-ROM behind it
    kind: str = "scsi"  # scsi | ide | nvme | nvme-ns | virtio-blk | sd | usb | uas | builtin-ide
    usb_host: str = ""
    no_disk: str = ""  # why the disk never shows, with any initrd: then only the binding is checked


@dataclass(frozen=True)
class BootGroup:
    name: str
    nics: tuple[Nic, ...] = ()
    storage: tuple[Storage, ...] = ()
    extra: tuple[str, ...] = field(default=())


E100 = (
    "i82550",
    "i82551",
    "i82557a",
    "i82557b",
    "i82557c",
    "i82558a",
    "i82558b",
    "i82559a",
    "i82559b",
    "i82559c",
    "i82559er",
    "i82562",
    "i82801",
)

GROUPS: tuple[BootGroup, ...] = (
    BootGroup(
        "nics",
        nics=(
            Nic("e1000", "e1000"),
            Nic("e1000-82544gc", "e1000"),
            Nic("e1000-82545em", "e1000"),
            Nic("e1000e", "e1000e"),
            Nic("ne2k_pci", "ne2k-pci"),
            Nic("pcnet", "pcnet32"),
            Nic("rtl8139", "8139cp"),
            Nic("tulip", "tulip"),
            Nic("vmxnet3", "vmxnet3"),
            Nic("virtio-net-pci", "virtio_net"),
            Nic("virtio-net-pci-non-transitional", "virtio_net"),
            Nic("virtio-net-pci-transitional", "virtio_net"),
            Nic("usb-net", "cdc_ether", usb_host="qemu-xhci"),
        ),
    ),
    BootGroup("nics-e100", nics=tuple(Nic(m, "e100") for m in E100)),
    BootGroup(
        "hba",
        storage=(
            Storage("ahci", "ahci", 33, cdrom=True, kind="ide"),
            Storage("lsi53c895a", "sym53c8xx", 34, cdrom=True),
            Storage("lsi53c810", "sym53c8xx", 35, cdrom=True),
            Storage("megasas", "megaraid_sas", 36, cdrom=True),
            Storage("megasas-gen2", "megaraid_sas", 37, cdrom=True),
            Storage(
                "mptsas1068",
                "mptsas",
                38,
                cdrom=True,
                no_disk="QEMU 7.2's SAS 1068 reports no end devices to Linux 6.1's mptsas: Debian's own"
                " initramfs-tools image shows the same (host2 registered, no scsi 2:0:0:0)",
            ),
            Storage("pvscsi", "vmw_pvscsi", 39, cdrom=True),
            Storage("piix3-ide", "ata_piix", 40, cdrom=True, kind="builtin-ide"),
        ),
    ),
    BootGroup(
        "hba-2",
        storage=(
            Storage("am53c974", "am53c974", 41, cdrom=True),
            Storage("dc390", "am53c974", 42, cdrom=True),
            Storage("nvme", "nvme", 43, kind="nvme"),
            Storage("virtio-blk-pci", "virtio_blk", 44, kind="virtio-blk"),
            Storage("virtio-blk-pci-transitional", "virtio_blk", 46, kind="virtio-blk"),
            Storage("virtio-blk-pci-non-transitional", "virtio_blk", 55, kind="virtio-blk"),
            Storage("virtio-scsi-pci", "virtio_scsi", 45, cdrom=True),
            Storage("virtio-scsi-pci-transitional", "virtio_scsi", 56, cdrom=True),
            Storage("virtio-scsi-pci-non-transitional", "virtio_scsi", 57, cdrom=True),
            Storage("sdhci-pci", "sdhci-pci", 32, kind="sd"),
            # a namespace device in an NVM subsystem, instead of the controller's drive=
            Storage("nvme-ns", "nvme", 58, kind="nvme-ns"),
        ),
    ),
    BootGroup(
        "usb",
        storage=(
            Storage("usb-storage@qemu-xhci", "xhci_hcd", 47, kind="usb", usb_host="qemu-xhci"),
            Storage("usb-storage@usb-ehci", "ehci-pci", 48, kind="usb", usb_host="usb-ehci"),
            Storage("usb-storage@ich9-usb-ehci1", "ehci-pci", 49, kind="usb", usb_host="ich9-usb-ehci1"),
            Storage("usb-storage@piix3-usb-uhci", "uhci_hcd", 50, kind="usb", usb_host="piix3-usb-uhci"),
            Storage("usb-storage@pci-ohci", "ohci-pci", 51, kind="usb", usb_host="pci-ohci"),
            Storage("usb-storage@nec-usb-xhci", "xhci_hcd", 52, kind="usb", usb_host="nec-usb-xhci"),
            Storage("usb-storage@ich9-usb-ehci2", "ehci-pci", 59, kind="usb", usb_host="ich9-usb-ehci2"),
            Storage("usb-storage@ich9-usb-uhci1", "uhci_hcd", 60, kind="usb", usb_host="ich9-usb-uhci1"),
            Storage("usb-storage@ich9-usb-uhci2", "uhci_hcd", 61, kind="usb", usb_host="ich9-usb-uhci2"),
            Storage("usb-storage@ich9-usb-uhci3", "uhci_hcd", 62, kind="usb", usb_host="ich9-usb-uhci3"),
            Storage("usb-storage@ich9-usb-uhci4", "uhci_hcd", 63, kind="usb", usb_host="ich9-usb-uhci4"),
            Storage("usb-storage@ich9-usb-uhci5", "uhci_hcd", 64, kind="usb", usb_host="ich9-usb-uhci5"),
            Storage("usb-storage@ich9-usb-uhci6", "uhci_hcd", 65, kind="usb", usb_host="ich9-usb-uhci6"),
            Storage("usb-storage@piix4-usb-uhci", "uhci_hcd", 66, kind="usb", usb_host="piix4-usb-uhci"),
            Storage("usb-uas@qemu-xhci", "uas", 54, kind="uas", usb_host="qemu-xhci"),
            Storage("usb-bot@qemu-xhci", "usb-storage", 53, kind="usb-bot", usb_host="qemu-xhci"),
        ),
        extra=("-device", "usb-kbd,bus=usbhost0.0"),
    ),
)

# Listed by `qemu-system-x86_64 -device help` under Network, Storage or USB devices and not
# booted here, each with its reason (tests/test_boot_matrix.py checks that list against
# QEMU's, so a model QEMU adds cannot be left out silently).
_MMIO = "virtio-mmio transport: no virtio-bus on the pc machine (QEMU refuses the device)"
_VHOST_USER = "a vhost-user back-end: needs a vhost-user daemon on the host"
_VHOST_SCSI = "needs the host's vhost-scsi target (kernel LIO); the guest sees a virtio-scsi HBA, tested"
NOT_TESTED: dict[str, str] = {
    "ne2k_isa": "ISA, not PCI or USB (the ne2k driver exists but needs io=/irq= parameters)",
    "isa-ide": "ISA IDE; the pc machine's own IDE is piix3-ide, tested",
    "piix4-ide": "a second PIIX IDE on the pc machine decodes the same legacy ports as the built-in"
    " piix3-ide, so both fight over one disk (ATA timeouts); its driver ata_piix is tested on piix3-ide",
    "isa-fdc": "the pc machine's floppy controller; always present, `floppy` loads in every boot",
    "floppy": "a drive on isa-fdc, the pc machine's ISA floppy controller (not PCI or USB)",
    "pvrdma": "an RDMA device needing a host RDMA backend; not a NIC (driver vmw_pvrdma)",
    "rocker": "a switch ASIC model that needs ports wired to host netdevs; driver rocker is packed",
    "virtio-net-device": _MMIO,
    "virtio-blk-device": _MMIO,
    "virtio-scsi-device": _MMIO,
    "virtio-9p-device": _MMIO,
    "vhost-scsi": f"{_MMIO}; {_VHOST_SCSI}",
    "vhost-user-blk": f"{_MMIO}; {_VHOST_USER}",
    "vhost-user-scsi": f"{_MMIO}; {_VHOST_USER}",
    "vhost-user-fs-device": f"{_MMIO}; {_VHOST_USER} (virtiofsd)",
    "cxl-type3": "needs a CXL host bridge (q35 with cxl=on); not a boot or restore device",
    "nvdimm": "persistent memory, needs -machine nvdimm=on and a memory backend",
    "vhost-scsi-pci": _VHOST_SCSI,
    "vhost-scsi-pci-transitional": _VHOST_SCSI,
    "vhost-scsi-pci-non-transitional": _VHOST_SCSI,
    "vhost-user-blk-pci": f"{_VHOST_USER}; the guest sees a virtio-blk device, tested",
    "vhost-user-blk-pci-transitional": f"{_VHOST_USER}; the guest sees a virtio-blk device, tested",
    "vhost-user-blk-pci-non-transitional": f"{_VHOST_USER}; the guest sees a virtio-blk device, tested",
    "vhost-user-scsi-pci": f"{_VHOST_USER}; the guest sees a virtio-scsi HBA, tested",
    "vhost-user-scsi-pci-transitional": f"{_VHOST_USER}; the guest sees a virtio-scsi HBA, tested",
    "vhost-user-scsi-pci-non-transitional": f"{_VHOST_USER}; the guest sees a virtio-scsi HBA, tested",
    "vhost-user-fs-pci": "needs virtiofsd on the host; a filesystem, not a disk",
    "virtio-9p-pci": "a shared filesystem, not a disk",
    "virtio-9p-pci-transitional": "a shared filesystem, not a disk",
    "virtio-9p-pci-non-transitional": "a shared filesystem, not a disk",
    "scsi-block": "passes a host SCSI device through",
    "scsi-generic": "passes a host SCSI device through",
    "usb-mtp": "Media Transfer Protocol: not a block device",
    "usb-uas@nec-usb-xhci": "the NEC xHCI model has no stream support, which uas requires (the kernel"
    " says so); usb-uas is tested behind qemu-xhci and nec-usb-xhci with usb-storage",
    "virtio-pmem": "persistent memory over virtio-mmio",
}


def _disk(path: Path, mib: int) -> Path:
    with path.open("wb") as f:
        f.truncate(mib * MiB)
    return path


def qemu_args(group: BootGroup, workdir: Path) -> list[str]:
    """The -device/-drive/-netdev arguments of a boot group."""
    args: list[str] = []
    usb_hosts: dict[str, str] = {}

    def usb_bus(host: str) -> str:
        if host not in usb_hosts:
            bus_id = f"usbhost{len(usb_hosts)}"
            usb_hosts[host] = bus_id
            args.extend(["-device", f"{host},id={bus_id}"])
        bus = usb_hosts[host]
        # UHCI/OHCI/EHCI companions name their bus "<id>.0" like xhci
        return f"{bus}.0"

    if any(s.kind in ("usb", "uas", "usb-bot") for s in group.storage) or group.extra:
        usb_bus("qemu-xhci")  # usbhost0: the keyboard's bus
    for i, nic in enumerate(group.nics):
        mac = f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"
        args.extend(["-netdev", f"user,id=n{i}"])
        if nic.usb_host:
            args.extend(["-device", f"{nic.model},netdev=n{i},mac={mac},bus={usb_bus(nic.usb_host)}"])
        else:
            args.extend(["-device", f"{nic.model},netdev=n{i},mac={mac}"])
    for i, st in enumerate(group.storage):
        disk = _disk(workdir / f"{group.name}-{i}.img", st.disk_mib)
        drive = f"d{i}"
        args.extend(["-drive", f"if=none,id={drive},file={disk},format=raw"])
        ctl = f"c{i}"
        model = st.model.split("@")[0]
        if st.kind in ("builtin-ide", "ide", "scsi"):
            bus = "ide" if st.kind == "builtin-ide" else ctl
            family = "scsi" if st.kind == "scsi" else "ide"
            if st.kind != "builtin-ide":
                args.extend(["-device", f"{model},id={ctl}"])
            args.extend(["-device", f"{family}-hd,drive={drive},bus={bus}.0"])
            if st.cdrom:
                cd_bus = f"{bus}.0" if family == "scsi" else f"{bus}.1"  # IDE: one device per bus
                args.extend(
                    [
                        "-drive",
                        f"if=none,id={drive}cd,media=cdrom",
                        "-device",
                        f"{family}-cd,drive={drive}cd,bus={cd_bus}",
                    ]
                )
        elif st.kind == "nvme":
            args.extend(["-device", f"nvme,serial=nvme{i},drive={drive}"])
        elif st.kind == "nvme-ns":
            args.extend(["-device", f"nvme-subsys,id=ss{i},nqn=ss{i}",
                         "-device", f"nvme,id={ctl},serial=nvme{i},subsys=ss{i}",
                         "-device", f"nvme-ns,drive={drive},bus={ctl}"])  # fmt: skip
        elif st.kind == "virtio-blk":
            args.extend(["-device", f"{model},drive={drive}"])
        elif st.kind == "sd":
            args.extend(["-device", f"{model},id={ctl}", "-device", f"sd-card,drive={drive}"])
        elif st.kind in ("usb", "usb-bot"):
            dev = "usb-bot" if st.kind == "usb-bot" else "usb-storage"
            if dev == "usb-bot":
                args.extend(
                    [
                        "-device",
                        f"usb-bot,id={ctl},bus={usb_bus(st.usb_host)}",
                        "-device",
                        f"scsi-hd,drive={drive},bus={ctl}.0,lun=0",
                    ]
                )
            else:
                args.extend(["-device", f"usb-storage,drive={drive},bus={usb_bus(st.usb_host)}"])
        elif st.kind == "uas":
            args.extend(
                [
                    "-device",
                    f"usb-uas,id={ctl},bus={usb_bus(st.usb_host)}",
                    "-device",
                    f"scsi-hd,drive={drive},bus={ctl}.0,scsi-id=0,lun=0",
                ]
            )
        else:
            raise ValueError(f"unknown storage kind {st.kind}")
    args.extend(group.extra)
    return args
