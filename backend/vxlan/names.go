package vxlan

import (
	"fmt"
)

// DefaultName is flannel's name for the device of a VNI: flannel.1 for
// IPv4, flannel-v6.1 for IPv6.
func DefaultName(vni uint32, v6 bool) string {
	if vni == 0 {
		vni = DefaultVNI
	}
	if v6 {
		return fmt.Sprintf("flannel-v6.%d", vni)
	}
	return fmt.Sprintf("flannel.%d", vni)
}

// fixChecksumLocked sets the device's tx checksum offload to Config's.
func (d *Device) fixChecksumLocked() error {
	want := d.cfg.TxChecksum
	if want == nil {
		return nil
	}
	on, err := d.nl.TxChecksum(d.cfg.Name)
	if err != nil || on == *want {
		return err
	}
	if err := d.nl.SetTxChecksum(d.cfg.Name, *want); err != nil {
		return err
	}
	d.log.Debug("set tx checksum offload", "on", *want)
	d.checksumFixed = true
	return nil
}
