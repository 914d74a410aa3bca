package ip

import (
	"crypto/sha256"
	"encoding/binary"
	"net"
	"net/netip"
)

// VTEPMAC derives the MAC address of a node's VXLAN device from its public
// (underlay) address and the VNI. It is a hash, so the same node gets the same
// MAC across agent restarts, reboots and re-creation of the device, and peers'
// neighbour and FDB entries stay valid. The result is a locally administered
// unicast address (bit 1 of the first octet set, bit 0 clear).
func VTEPMAC(publicIP netip.Addr, vni uint32) net.HardwareAddr {
	var buf [16 + 4 + 4]byte
	copy(buf[:], "weft")
	a := publicIP.Unmap().As16()
	copy(buf[4:], a[:])
	binary.BigEndian.PutUint32(buf[20:], vni)
	sum := sha256.Sum256(buf[:])
	mac := make(net.HardwareAddr, 6)
	copy(mac, sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
