"""The boot side's network stage.

`words` parses the network words of the kernel command line (ipconf=, ip= in the kernel's
and dracut's forms, nameserver=, BOOTIF=, vlan=, bond=); `plan` turns them and the machine's
interfaces into an ordered, pure NetworkPlan; `stage` carries it out: links, bonds and VLANs
(busybox `ip`), static addresses (`addresses`), DHCP through busybox's udhcpc (`dhcp`: one
client per candidate interface, the first lease wins), and reports the `network` section.

Like the rest of the boot side: standard library only (plus pyudev, libarchive-c, module_db).
"""
