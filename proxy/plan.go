package proxy

import (
	"net/netip"
	"slices"

	"github.com/weft-net/weft/service"
)

// port is one service port as the kernel serves it: the unit of the plan.
type svcPort struct {
	key      string // chain name: "svc-<ns>/<name>/<port name, or protocol-port>"
	ref      string // "<ns>/<name>"
	vip      netip.Addr
	proto    uint8 // IPPROTO_TCP or IPPROTO_UDP
	port     uint16
	backends []netip.AddrPort // sorted; only those with a live lease
	affinity int              // ClientIP timeout in seconds; 0 = none
}

func protoNum(p service.Protocol) uint8 {
	if p == service.UDP {
		return 17
	}
	return 6
}

func portKey(s *service.Service, p service.Port) string {
	n := p.Name
	if n == "" {
		n = string(p.Protocol) + "-" + itoa(int(p.Port))
	}
	return "svc-" + s.Namespace + "/" + s.Name + "/" + n
}

func itoa(n int) string {
	var b [6]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// live says which overlay addresses have a live lease: those in the node's
// own subnet or a peer's. Addresses outside the overlay, or on the hosts'
// own network, are always live.
type live struct {
	overlay  netip.Prefix
	underlay []netip.Prefix
	subnets  map[netip.Prefix]bool
	bits     []int // the distinct prefix lengths among subnets
}

func newLive(overlay netip.Prefix, underlay, subnets []netip.Prefix) *live {
	l := &live{overlay: overlay, underlay: underlay, subnets: make(map[netip.Prefix]bool, len(subnets))}
	for _, s := range subnets {
		s = s.Masked()
		l.subnets[s] = true
		if !slices.Contains(l.bits, s.Bits()) {
			l.bits = append(l.bits, s.Bits())
		}
	}
	return l
}

func (l *live) ok(a netip.Addr) bool {
	if l == nil || !l.overlay.IsValid() || !l.overlay.Contains(a) {
		return true
	}
	for _, u := range l.underlay {
		if u.Contains(a) {
			return true
		}
	}
	for _, b := range l.bits {
		if p, err := a.Prefix(b); err == nil && l.subnets[p] {
			return true
		}
	}
	return false
}

// plan returns the ports of one service, with their live backends.
func plan(s *service.Service, e *service.Endpoints, lv *live) []*svcPort {
	if s == nil || !s.ClusterIP.IsValid() {
		return nil
	}
	out := make([]*svcPort, 0, len(s.Ports))
	for _, p := range s.Ports {
		all := service.Backends(s, p, e)
		bs := all[:0:0]
		for _, b := range all {
			if lv.ok(b.Addr()) {
				bs = append(bs, b)
			}
		}
		out = append(out, &svcPort{
			key: portKey(s, p), ref: s.Ref(), vip: s.ClusterIP, proto: protoNum(p.Protocol),
			port: p.Port, backends: bs, affinity: s.AffinityTimeout,
		})
	}
	return out
}
