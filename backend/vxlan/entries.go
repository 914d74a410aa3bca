package vxlan

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/weft-net/weft/backend"
)

// entries is a set of per-peer kernel entries in canonical form: what Set
// wants, or what the record says was programmed. The three maps are keyed the
// way the kernel identifies each entry, so a changed peer shows up as a
// changed value (replaced in place) or as a new key plus a stale one.
type entries struct {
	fdb    map[mac]netip.Addr          // VTEP MAC -> peer's underlay address
	neighs map[netip.Addr]mac          // peer's VTEP address (subnet .0) -> VTEP MAC
	routes map[netip.Prefix]netip.Addr // peer subnet -> gateway (its .0)
}

func newEntries(n int) *entries {
	return &entries{
		fdb:    make(map[mac]netip.Addr, n),
		neighs: make(map[netip.Addr]mac, n),
		routes: make(map[netip.Prefix]netip.Addr, n),
	}
}

func (e *entries) clone() *entries {
	return &entries{fdb: maps.Clone(e.fdb), neighs: maps.Clone(e.neighs), routes: maps.Clone(e.routes)}
}

// desired turns peers into entries. Peers that cannot be programmed (invalid
// fields, a subnet overlapping ours or another peer's, a MAC already used by
// another peer) are left out and reported; the others are still returned.
// e is reused if not nil, saving the allocation (and the garbage) of three
// big maps on every Set.
func (d *Device) desired(peers []backend.Peer, e *entries) (*entries, error) {
	if e == nil {
		e = newEntries(len(peers))
	} else {
		clear(e.fdb)
		clear(e.neighs)
		clear(e.routes)
	}
	var errs []error
	for _, p := range peers {
		if err := d.checkPeer(p, e); err != nil {
			errs = append(errs, fmt.Errorf("skipping peer %v (%v, %v): %w", p.Subnet, p.PublicIP, p.VtepMAC, err))
			continue
		}
		subnet := p.Subnet.Masked()
		vtep := subnet.Addr()
		m := macOf(p.VtepMAC)
		e.fdb[m] = p.PublicIP.Unmap()
		e.neighs[vtep] = m
		e.routes[subnet] = vtep
	}
	return e, errors.Join(errs...)
}

func (d *Device) checkPeer(p backend.Peer, so *entries) error {
	switch {
	case !p.Subnet.IsValid():
		return errors.New("invalid subnet")
	case !p.PublicIP.IsValid():
		return errors.New("invalid public IP")
	case len(p.VtepMAC) != 6:
		return errors.New("VTEP MAC is not a 6-byte Ethernet address")
	case p.VtepMAC[0]&1 != 0:
		return errors.New("VTEP MAC is a multicast address")
	case p.PublicIP.Unmap().Is4() != d.cfg.Local.Is4():
		return fmt.Errorf("public IP family differs from the local address %v", d.cfg.Local)
	case p.Subnet.Addr().Is4() != d.cfg.Subnet.Addr().Is4():
		return fmt.Errorf("subnet family differs from our subnet %v", d.cfg.Subnet)
	case p.Subnet.Overlaps(d.cfg.Subnet):
		return fmt.Errorf("subnet overlaps our own subnet %v", d.cfg.Subnet)
	}
	subnet := p.Subnet.Masked()
	if _, dup := so.routes[subnet]; dup {
		return errors.New("another peer has the same subnet")
	}
	if _, dup := so.fdb[macOf(p.VtepMAC)]; dup {
		return errors.New("another peer has the same VTEP MAC")
	}
	return nil
}

// mac is an Ethernet address as a comparable value: a cheap map key on the
// hot path of Set.
type mac [6]byte

// macOf converts hw; callers check its length first (a wrong one gives the
// zero mac).
func macOf(hw net.HardwareAddr) mac {
	var m mac
	if len(hw) == len(m) {
		copy(m[:], hw)
	}
	return m
}

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m[:]) }

func (m mac) String() string { return m.hw().String() }
