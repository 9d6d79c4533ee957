#!/bin/sh
# PID 1 of a ParetoPipe virtual device (a QEMU guest with Debian's own kernel), installed into
# the image as /sbin/paretopipe-init. Disks, in order: vda the root (a copy-on-write overlay of
# the cached image), vdb the device's seed (ext4: device.env with NAME, ADDR and NIC, its ssh host
# key, the controller's authorized_keys), vdc an optional wheelhouse, mounted read-only at
# /srv/wheelhouse. It brings the NIC up and runs sshd; nothing else (no systemd: a device boots in
# seconds of guest time, and sshd is all the controller needs, as on a freshly flashed Pi).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The initramfs hands over /proc and /sys already mounted.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
modprobe virtio_net 2>/dev/null

mkdir -p /run/pp-seed
if ! mount -o ro /dev/vdb /run/pp-seed; then
    echo "paretopipe-init: no seed disk (/dev/vdb); cannot configure this device" >&2
fi
. /run/pp-seed/device.env
echo "paretopipe-init: device ${NAME:?} address ${ADDR:?} nic ${NIC:=eth0}"
hostname "$NAME"
echo "$NAME" >/etc/hostname
install -m 600 /run/pp-seed/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /run/pp-seed/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
install -d -m 700 /root/.ssh
install -m 600 /run/pp-seed/authorized_keys /root/.ssh/authorized_keys
umount /run/pp-seed
rmdir /run/pp-seed
if [ -b /dev/vdc ]; then
    mkdir -p /srv/wheelhouse
    mount -o ro,noload /dev/vdc /srv/wheelhouse
fi

ip link set lo up
ip addr add "$ADDR" dev "$NIC"
ip link set "$NIC" up
# IPv4 only, as on the namespace testbed: shaping filters IPv4.
sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 2>/dev/null

mkdir -p /run/sshd
chmod 755 /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log -o PermitRootLogin=prohibit-password \
    -o HostKey=/etc/ssh/ssh_host_ed25519_key -o UseDNS=no
echo "paretopipe-init: ready"

halt() {
    echo "paretopipe-init: halting"
    kill -TERM -1 2>/dev/null
    sleep 1
    sync
    echo o >/proc/sysrq-trigger
}
trap halt TERM USR2
# Reap orphans until told to stop.
while :; do
    wait
    sleep 1 &
    wait $!
done
