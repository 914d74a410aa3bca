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
type LeaseAttrs struct {
	PublicIP    netip.Addr // the node's underlay address
	BackendType string     // "vxlan"
	VNI         uint32     // 0: not stated (old flanneld), taken as the network's VNI
	VtepMAC     net.HardwareAddr
}

// Lease is one key under <prefix>/subnets/.
type Lease struct {
	Subnet netip.Prefix
	Attrs  LeaseAttrs
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

// KeyName is the last element of a subnet's key: "172.16.28.0-24".
func KeyName(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseKey parses the last element of a subnet key strictly: a canonical IPv4
// network address (no host bits), a dash, and a decimal prefix length.
// flannel's dual-stack form ("...&fd00::-64") is rejected: weft is IPv4-only.
func ParseKey(name string) (netip.Prefix, error) {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("key %q: want ADDRESS-LENGTH", clip(name))
	}
	as, ls := name[:i], name[i+1:]
	a, err := netip.ParseAddr(as)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("key %q: %q is not an IPv4 address", clip(name), clip(as))
	}
	n, err := strconv.Atoi(ls)
	if err != nil || n < 0 || n > 32 || strconv.Itoa(n) != ls {
		return netip.Prefix{}, fmt.Errorf("key %q: %q is not a prefix length 0-32", clip(name), clip(ls))
	}
	p := netip.PrefixFrom(a, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("key %q: host bits set (did you mean %s?)", name, KeyName(p.Masked()))
	}
	return p, nil
}

// wireAttrs is flannel's JSON shape of a lease value (pkg/lease LeaseAttrs).
// PublicIPv6 and BackendV6Data, written by flannel v0.2x, are ignored.
type wireAttrs struct {
	PublicIP    string
	BackendType string          `json:",omitempty"`
	BackendData json.RawMessage `json:",omitempty"`
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
	return json.Marshal(wireAttrs{PublicIP: a.PublicIP.String(), BackendType: a.BackendType, BackendData: bd})
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

// attrs checks a lease value.
func (v leaseValue) attrs() (LeaseAttrs, error) {
	var a LeaseAttrs
	if v.PublicIP == "" {
		return a, errors.New("lease value: PublicIP missing")
	}
	ipa, err := netip.ParseAddr(v.PublicIP)
	if err != nil || !ipa.Is4() {
		return a, fmt.Errorf("lease value: PublicIP %q: not an IPv4 address", clip(v.PublicIP))
	}
	a.PublicIP = ipa
	a.BackendType = v.BackendType
	if v.BackendType != "vxlan" {
		return a, nil
	}
	if !v.BackendData {
		return a, errors.New("lease value: BackendData missing")
	}
	if v.dataErr != nil {
		return a, v.dataErr
	}
	// VNI 0 (absent) is what flanneld before v0.8 writes: it never stated the VNI.
	if v.VNI > maxVNI {
		return a, fmt.Errorf("lease value: BackendData.VNI %d: must be between 1 and %d", v.VNI, maxVNI)
	}
	mac, err := net.ParseMAC(v.VtepMAC)
	if err != nil || len(mac) != 6 {
		return a, fmt.Errorf("lease value: BackendData.VtepMAC %q: not a 6-byte MAC", clip(v.VtepMAC))
	}
	a.VNI, a.VtepMAC = v.VNI, mac
	return a, nil
}

// sameAttrs reports whether two values would be written identically.
func sameAttrs(a, b LeaseAttrs) bool {
	return a.PublicIP == b.PublicIP && a.BackendType == b.BackendType && a.VNI == b.VNI &&
		bytes.Equal(a.VtepMAC, b.VtepMAC)
}

// parseKV turns one etcd key-value into a Lease; problems land in Lease.Err.
func parseKV(subnetsPrefix string, key, value []byte, etcdLease, create, mod int64) Lease {
	l := Lease{Key: string(key), EtcdLeaseID: etcdLease, CreateRevision: create, ModRevision: mod}
	name, ok := strings.CutPrefix(l.Key, subnetsPrefix)
	if !ok {
		l.Err = fmt.Errorf("key %q: not under %s", clip(l.Key), subnetsPrefix)
		return l
	}
	if l.Subnet, l.Err = ParseKey(name); l.Err != nil {
		return l
	}
	if l.Err = valueSizeErr("lease value", value); l.Err != nil {
		return l
	}
	l.Attrs, l.Err = ParseLeaseAttrs(value)
	return l
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
