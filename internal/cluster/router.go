package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// A second underlay segment behind a router, for nodes that are not on the
// same link (DirectRouting sends their peers through VXLAN):
//
//	br0 (172.17.0.0/16) ── router eth0 172.17.42.254 / eth1 192.168.77.1 ── br1 (192.168.77.0/24)
//
// Both bridges live in the underlay namespace, so nothing leaves the
// cluster's namespaces.

// AddSegment creates bridge name (e.g. "br1") in the underlay namespace: a
// second switch, reachable from br0 only through a router.
func (c *Cluster) AddSegment(ctx context.Context, name string) error {
	if err := checkName("segment", name); err != nil || name == "br0" {
		return errors.Join(err, fmt.Errorf("segment %q: not a new bridge name", name))
	}
	if err := c.steps(ctx, c.Underlay, "link add "+name+" type bridge", "link set "+name+" up"); err != nil {
		return fmt.Errorf("adding segment %s: %w", name, err)
	}
	return nil
}

// AddHostOn is AddHost on segment bridge instead of br0.
func (c *Cluster) AddHostOn(ctx context.Context, name string, addr netip.Prefix, bridge string) (*Host, error) {
	h, err := c.AddHost(ctx, name, addr)
	if err != nil || bridge == "br0" {
		return h, err
	}
	if err := c.steps(ctx, c.Underlay, "link set u-"+name+" nomaster", "link set u-"+name+" master "+bridge+" up"); err != nil {
		return nil, fmt.Errorf("moving host %s to %s: %w", name, bridge, err)
	}
	return h, nil
}

// AddRouter adds host name on br0 at addr, with a second interface eth1 on
// segment bridge at far, and IPv4 forwarding on: hosts on either side that
// route the other side's network through it reach each other.
func (c *Cluster) AddRouter(ctx context.Context, name string, addr netip.Prefix, bridge string, far netip.Prefix) (*Host, error) {
	h, err := c.AddHost(ctx, name, addr)
	if err != nil {
		return nil, err
	}
	port := "u-" + name + "1"
	err = c.steps(ctx, h.NS, "link add eth1 mtu 1500 type veth peer name "+port+" mtu 1500 netns "+c.Underlay)
	if err == nil {
		err = c.steps(ctx, c.Underlay, "link set "+port+" master "+bridge+" up")
	}
	if err == nil {
		err = c.steps(ctx, h.NS, "addr add "+far.String()+" dev eth1", "link set eth1 up")
	}
	if err == nil {
		_, err = h.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	if err != nil {
		return nil, fmt.Errorf("adding router %s: %w", name, err)
	}
	return h, nil
}
