package network

import (
	"context"
	"errors"
	"net/netip"

	"github.com/weft-net/weft/backend"
	rulebook "github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/subnet"
)

// DualStack is the data plane of a dual-stack node: one Dataplane per
// family, made by the same code (backend/vxlan's Device with an IPv4 and an
// IPv6 Local), each programming its half of every peer. The first family's
// device gets the peers as they are (its Device reads only the first half),
// so a peer change costs the v4 path what it cost before; the IPv6 device
// gets the peers' IPv6 halves (rulebook.Halves), leases without one left out.
type DualStack struct {
	first, v6 Dataplane
	halves    []backend.Peer // reused by Set
}

var _ Dataplane = (*DualStack)(nil)

// NewDualStack joins the first family's data plane and the IPv6 one.
func NewDualStack(first, v6 Dataplane) *DualStack { return &DualStack{first: first, v6: v6} }

// Set programs each family's half of peers.
func (d *DualStack) Set(ctx context.Context, peers []backend.Peer) error {
	err := d.first.Set(ctx, peers)
	d.halves = rulebook.Halves(d.halves[:0], peers, true)
	err6 := d.v6.Set(ctx, d.halves)
	clear(d.halves) // keep no MACs of departed peers
	if cap(d.halves) > 2*len(peers)+64 {
		d.halves = nil
	}
	return errors.Join(err, err6)
}

// Ensure creates or adopts both devices.
func (d *DualStack) Ensure(ctx context.Context) (bool, error) {
	c1, err1 := d.first.Ensure(ctx)
	c2, err2 := d.v6.Ensure(ctx)
	return c1 || c2, errors.Join(err1, err2)
}

// Reconcile repairs both devices and adds up their repairs.
func (d *DualStack) Reconcile(ctx context.Context) (map[string]int, error) {
	r1, err1 := d.first.Reconcile(ctx)
	r2, err2 := d.v6.Reconcile(ctx)
	sum := make(map[string]int, len(r1))
	for k, v := range r1 {
		sum[k] += v
	}
	for k, v := range r2 {
		sum[k] += v
	}
	return sum, errors.Join(err1, err2)
}

// Subscribe follows both devices' kernel events.
func (d *DualStack) Subscribe(ctx context.Context, kick func()) error {
	if err := d.first.Subscribe(ctx, kick); err != nil {
		return err
	}
	return d.v6.Subscribe(ctx, kick)
}

// MTU is the smaller of the two devices' MTUs (the IPv6 one, 20 bytes
// less on the same uplink): containers have one MTU for both families.
func (d *DualStack) MTU() int { return min(d.first.MTU(), d.v6.MTU()) }

// Name is the first device's name (flannel.<VNI>).
func (d *DualStack) Name() string { return d.first.Name() }

// Name6 is the IPv6 device's name (flannel-v6.<VNI>).
func (d *DualStack) Name6() string { return d.v6.Name() }

// Close closes both.
func (d *DualStack) Close() {
	d.first.Close()
	d.v6.Close()
}

// leaseEnv is the subnet.env lines of lease l in network c (MTU, masquerade
// and etcd lease left to the caller): FLANNEL_NETWORK and FLANNEL_SUBNET for
// an IPv4 first subnet, FLANNEL_IPV6_* for the IPv6 one (first in an
// IPv6-only network, second in a dual-stack one). The subnet lines name the
// bridge's address, the subnet's first host.
func leaseEnv(c subnet.Config, l subnet.Lease) SubnetEnv {
	var env SubnetEnv
	first := netip.PrefixFrom(l.Subnet.Addr().Next(), l.Subnet.Bits())
	if l.Subnet.Addr().Is4() {
		env.Network, env.Subnet = c.Network, first
	} else {
		env.Network6, env.Subnet6 = c.Network, first
	}
	if l.Subnet6.IsValid() {
		env.Network6, env.Subnet6 = c.IPv6.Network, netip.PrefixFrom(l.Subnet6.Addr().Next(), l.Subnet6.Bits())
	}
	return env
}

// previousSubnet6 is a dual-stack node's IPv6 subnet before, according to
// subnet.env; zero if none.
func (n *Node) previousSubnet6() netip.Prefix {
	if n.cfg.SubnetFile == "" || !n.cfg.Config.Dual() {
		return netip.Prefix{}
	}
	env, err := ReadSubnetEnv(n.cfg.SubnetFile)
	if err != nil {
		return netip.Prefix{}
	}
	return env.Lease6()
}

// newRules makes the node's iptables rules: rc's, and for a dual-stack
// lease their ip6tables twins for the IPv6 subnet on the IPv6 device.
func (n *Node) newRules(rc RulesConfig, dp Dataplane, l subnet.Lease) (RuleSet, error) {
	r, err := n.cfg.NewRules(rc)
	if err != nil || !l.Subnet6.IsValid() {
		return r, err
	}
	rc6 := rc
	rc6.Network, rc6.Subnet = n.cfg.Config.IPv6.Network, l.Subnet6
	if ds, ok := dp.(interface{ Name6() string }); ok {
		rc6.Device = ds.Name6()
	}
	r6, err := n.cfg.NewRules(rc6)
	if err != nil {
		return nil, err
	}
	return ruleSets{r, r6}, nil
}

// ruleSets checks several RuleSets as one.
type ruleSets []RuleSet

func (rs ruleSets) Ensure() (int, error) {
	total := 0
	var errs []error
	for _, r := range rs {
		k, err := r.Ensure()
		total += k
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}
