package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// LeaseAttrs is the value of a subnet key: who holds the subnet and how to
// reach its VXLAN endpoint.
//
// PublicIP, VNI and VtepMAC are the lease's first half: IPv4 (flannel's
// PublicIP and BackendData), or, in an IPv6-only network, IPv6 (flannel's
// PublicIPv6 and BackendV6Data, with PublicIP "0.0.0.0"). PublicIP6 and
// VtepMAC6 are a dual-stack lease's IPv6 half (PublicIPv6, BackendV6Data).
type LeaseAttrs struct {
	PublicIP    netip.Addr // the node's underlay address
	BackendType string     // "vxlan"
	VNI         uint32     // 0: not stated (old flanneld), taken as the network's VNI
	VtepMAC     net.HardwareAddr

	PublicIP6 netip.Addr // dual-stack only: the node's IPv6 underlay address
	VtepMAC6  net.HardwareAddr
}

// Lease is one key under <prefix>/subnets/.
type Lease struct {
	// Subnet is the lease's first subnet: IPv4, or IPv6 in an IPv6-only
	// network. Subnet6 is a dual-stack lease's IPv6 subnet.
	Subnet  netip.Prefix
	Subnet6 netip.Prefix
	Attrs   LeaseAttrs
	// EtcdLeaseID is the etcd lease the key is attached to; 0 means a
	// reservation, a key an operator wrote without a lease, that never expires.
	EtcdLeaseID    int64
	Key            string // full etcd key
	CreateRevision int64
	ModRevision    int64

	// Err says why the key or its value could not be parsed (ListLeases,
	// and internally); nil for a well-formed lease.
	Err error
	// TTL is the time left on the etcd lease, filled in by ListLeases only;
	// -1 for a reservation.
	TTL time.Duration
}

// KeyName is the last element of a subnet's key: "172.16.28.0-24", or
// flannel's IPv6-only form "0.0.0.0-0&fd42:0:0:1c::-64" for an IPv6 p.
func KeyName(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "0.0.0.0-0&" + keyPart(p)
	}
	return keyPart(p)
}

// DualKeyName is the key name of a lease with the first subnet p and, when
// valid, the dual-stack IPv6 subnet p6: "172.16.28.0-24&fd42:0:0:1c::-64".
func DualKeyName(p, p6 netip.Prefix) string {
	if !p6.IsValid() {
		return KeyName(p)
	}
	return keyPart(p) + "&" + keyPart(p6)
}

// KeyNameOf is l's key name, from its subnets.
func KeyNameOf(l Lease) string { return DualKeyName(l.Subnet, l.Subnet6) }

func keyPart(p netip.Prefix) string { return p.Addr().String() + "-" + strconv.Itoa(p.Bits()) }

// ParseKey parses the last element of a subnet key strictly and returns its
// first subnet (see ParseDualKey).
func ParseKey(name string) (netip.Prefix, error) {
	p, _, err := ParseDualKey(name)
	return p, err
}

// ParseDualKey parses the last element of a subnet key strictly: a canonical
// IPv4 network address (no host bits), a dash and a decimal prefix length,
// optionally followed by "&" and the same for IPv6 (flannel's dual-stack
// key). flannel's IPv6-only key, "0.0.0.0-0&<IPv6>-<length>", gives the
// IPv6 subnet as p and no p6; a dual-stack key gives both.
func ParseDualKey(name string) (p, p6 netip.Prefix, err error) {
	v4, v6, dual := strings.Cut(name, "&")
	if p, err = parseKeyPart(name, v4, false); err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	if !dual {
		return p, netip.Prefix{}, nil
	}
	if p6, err = parseKeyPart(name, v6, true); err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	if p6.Bits() == 0 {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("key %q: the IPv6 subnet has length 0", clip(name))
	}
	if p.Bits() == 0 {
		if p.Addr() != netip.IPv4Unspecified() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("key %q: an IPv6-only key starts with 0.0.0.0-0", clip(name))
		}
		return p6, netip.Prefix{}, nil
	}
	return p, p6, nil
}

func parseKeyPart(name, part string, v6 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(part, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("key %q: want ADDRESS-LENGTH", clip(name))
	}
	as, ls := part[:i], part[i+1:]
	fam, most := "IPv4", 32
	if v6 {
		fam, most = "IPv6", 128
	}
	a, err := netip.ParseAddr(as)
	if err != nil || a.Is6() != v6 || a.Zone() != "" || a.Is4In6() || a.String() != as {
		return netip.Prefix{}, fmt.Errorf("key %q: %q is not an %s address", clip(name), clip(as), fam)
	}
	n, err := strconv.Atoi(ls)
	if err != nil || n < 0 || n > most || strconv.Itoa(n) != ls {
		return netip.Prefix{}, fmt.Errorf("key %q: %q is not a prefix length 0-%d", clip(name), clip(ls), most)
	}
	p := netip.PrefixFrom(a, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("key %q: host bits set (did you mean %s?)", clip(name), keyPart(p.Masked()))
	}
	return p, nil
}

// wireAttrs is flannel's JSON shape of a lease value (pkg/lease LeaseAttrs).
type wireAttrs struct {
	PublicIP      string
	PublicIPv6    string          `json:",omitempty"`
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

// wireVXLAN is flannel's vxlan BackendData shape.
type wireVXLAN struct {
	VNI     uint32
	VtepMAC string
}

// MarshalJSON writes flannel's exact field names so flanneld reads weft's
// leases and vice versa.
func (a LeaseAttrs) MarshalJSON() ([]byte, error) {
	bd, err := json.Marshal(wireVXLAN{VNI: a.VNI, VtepMAC: a.VtepMAC.String()})
	if err != nil {
		return nil, err
	}
	w := wireAttrs{PublicIP: a.PublicIP.String(), BackendType: a.BackendType, BackendData: bd}
	switch {
	case a.PublicIP.Is6(): // IPv6-only: flannel's PublicIP is then 0.0.0.0
		w.PublicIP, w.PublicIPv6, w.BackendData, w.BackendV6Data = "0.0.0.0", a.PublicIP.String(), nil, bd
	case a.PublicIP6.IsValid():
		w.PublicIPv6 = a.PublicIP6.String()
		if w.BackendV6Data, err = json.Marshal(wireVXLAN{VNI: a.VNI, VtepMAC: a.VtepMAC6.String()}); err != nil {
			return nil, err
		}
	}
	return json.Marshal(w)
}

// ParseLeaseAttrs parses a lease value. Wrong types, unparseable addresses
// and MACs are errors that name the field. For a BackendType other than vxlan
// the BackendData is not interpreted (VNI and VtepMAC stay zero).
func ParseLeaseAttrs(data []byte) (LeaseAttrs, error) {
	v, ok := scanLeaseValue(data)
	if !ok {
		var err error
		if v, err = decodeLeaseValue(data); err != nil {
			return LeaseAttrs{}, err
		}
	}
	return v.attrs()
}

// attrs checks a lease value. A value whose PublicIP is missing or
// 0.0.0.0 and that has a PublicIPv6 is an IPv6-only lease: its IPv6 half
// becomes the first half. Otherwise a PublicIPv6 makes it dual-stack, and
// its IPv6 half must be as well-formed as the first.
func (v leaseValue) attrs() (LeaseAttrs, error) {
	var a LeaseAttrs
	v6only := (v.PublicIP == "" || v.PublicIP == "0.0.0.0") && v.PublicIP6 != ""
	if v.PublicIP == "" && !v6only {
		return a, errors.New("lease value: PublicIP missing")
	}
	if !v6only {
		ipa, err := netip.ParseAddr(v.PublicIP)
		if err != nil || !ipa.Is4() {
			return a, fmt.Errorf("lease value: PublicIP %q: not an IPv4 address", clip(v.PublicIP))
		}
		a.PublicIP = ipa
	}
	if v.PublicIP6 != "" {
		ipa, err := netip.ParseAddr(v.PublicIP6)
		if err != nil || !ipa.Is6() || ipa.Is4In6() {
			return LeaseAttrs{}, fmt.Errorf("lease value: PublicIPv6 %q: not an IPv6 address", clip(v.PublicIP6))
		}
		if v6only {
			a.PublicIP = ipa
		} else {
			a.PublicIP6 = ipa
		}
	}
	a.BackendType = v.BackendType
	if v.BackendType != "vxlan" {
		return a, nil
	}
	if !v6only {
		if !v.BackendData {
			return a, errors.New("lease value: BackendData missing")
		}
		if v.dataErr != nil {
			return a, v.dataErr
		}
	}
	// VNI 0 (absent) is what flanneld before v0.8 writes: it never stated the VNI.
	if v.VNI > maxVNI {
		return a, fmt.Errorf("lease value: BackendData.VNI %d: must be between 1 and %d", v.VNI, maxVNI)
	}
	if !v6only {
		mac, err := net.ParseMAC(v.VtepMAC)
		if err != nil || len(mac) != 6 {
			return a, fmt.Errorf("lease value: BackendData.VtepMAC %q: not a 6-byte MAC", clip(v.VtepMAC))
		}
		a.VNI, a.VtepMAC = v.VNI, mac
	}
	if v.PublicIP6 == "" {
		return a, nil
	}
	if !v.BackendV6Data {
		return a, errors.New("lease value: BackendV6Data missing")
	}
	if v.dataErr6 != nil {
		return a, v.dataErr6
	}
	if v.VNI6 > maxVNI || (!v6only && v.VNI6 != 0 && v.VNI6 != v.VNI) {
		return a, fmt.Errorf("lease value: BackendV6Data.VNI %d: must be between 1 and %d, and BackendData's", v.VNI6, maxVNI)
	}
	mac, err := net.ParseMAC(v.VtepMAC6)
	if err != nil || len(mac) != 6 {
		return a, fmt.Errorf("lease value: BackendV6Data.VtepMAC %q: not a 6-byte MAC", clip(v.VtepMAC6))
	}
	if v6only {
		a.VNI, a.VtepMAC = v.VNI6, mac
	} else {
		a.VtepMAC6 = mac
	}
	return a, nil
}

// sameAttrs reports whether two values would be written identically.
func sameAttrs(a, b LeaseAttrs) bool {
	return a.PublicIP == b.PublicIP && a.BackendType == b.BackendType && a.VNI == b.VNI &&
		bytes.Equal(a.VtepMAC, b.VtepMAC) && a.PublicIP6 == b.PublicIP6 && bytes.Equal(a.VtepMAC6, b.VtepMAC6)
}

// parseKV turns one etcd key-value into a Lease; problems land in Lease.Err.
func parseKV(subnetsPrefix string, key, value []byte, etcdLease, create, mod int64) Lease {
	l := Lease{Key: string(key), EtcdLeaseID: etcdLease, CreateRevision: create, ModRevision: mod}
	name, ok := strings.CutPrefix(l.Key, subnetsPrefix)
	if !ok {
		l.Err = fmt.Errorf("key %q: not under %s", clip(l.Key), subnetsPrefix)
		return l
	}
	if l.Subnet, l.Subnet6, l.Err = ParseDualKey(name); l.Err != nil {
		return l
	}
	if l.Err = valueSizeErr("lease value", value); l.Err != nil {
		return l
	}
	l.Attrs, l.Err = ParseLeaseAttrs(value)
	if l.Err == nil {
		l.Err = l.shapeErr()
	}
	return l
}

// shapeErr reports a value whose families do not match its key's: an
// IPv6-only key needs an IPv6-only value, a dual-stack key a dual-stack
// value. A v4-only key with a dual-stack value is read as v4-only, the
// IPv6 half dropped (it has no subnet to go with).
func (l *Lease) shapeErr() error {
	a := &l.Attrs
	switch {
	case a.BackendType != "vxlan" && !a.PublicIP.IsValid():
		return nil
	case l.Subnet.Addr().Is6() != a.PublicIP.Is6():
		return fmt.Errorf("lease value: PublicIP %v: not of the family of the key's subnet %v", a.PublicIP, l.Subnet)
	case l.Subnet6.IsValid() && !a.PublicIP6.IsValid():
		return fmt.Errorf("lease value: PublicIPv6 missing for the key's IPv6 subnet %v", l.Subnet6)
	case !l.Subnet6.IsValid():
		a.PublicIP6, a.VtepMAC6 = netip.Addr{}, nil
	}
	return nil
}

// clip shortens s for an error message or a log line: a key or a field of a
// hostile value may be a megabyte long.
func clip(s string) string {
	const most = 64
	if len(s) <= most {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:most], len(s))
}
