package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/ip"
	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

// vxlanDataplane adapts backend/vxlan's Device to the loop's Dataplane.
type vxlanDataplane struct{ *vxlan.Device }

var _ network.Dataplane = vxlanDataplane{}

func newVXLAN(cfg vxlan.Config, log *slog.Logger, _ prometheus.Registerer) (network.Dataplane, error) {
	d, err := vxlan.New(cfg, log)
	if err != nil {
		return nil, err
	}
	return vxlanDataplane{d}, nil
}

func (v vxlanDataplane) Reconcile(ctx context.Context) (map[string]int, error) {
	r, err := v.Device.Reconcile(ctx)
	return map[string]int{"link": r.Link, "fdb": r.FDB, "neigh": r.Neigh, "route": r.Route}, err
}

// nodeFamilies is what the node publishes per address family: the first
// family's address and VTEP MAC (IPv4, or IPv6 in an IPv6-only network),
// and a dual-stack node's IPv6 ones, with the devices that carry them.
type nodeFamilies struct {
	publicIP, publicIP6 netip.Addr
	mac, mac6           net.HardwareAddr
	devices             []string // flannel.<VNI>, flannel-v6.<VNI>
}

// families picks the node's addresses for the network's families, and says
// which one is missing, naming the flag that gives it.
func families(cfg subnet.Config, up network.Uplink) (nodeFamilies, error) {
	vni := cfg.Backend.VNI
	var f nodeFamilies
	if cfg.EnableIPv4() {
		if !up.PublicIP.IsValid() {
			return f, fmt.Errorf("the network has IPv4 and interface %s has no IPv4 address: give --public-ip", up.Name)
		}
		f.publicIP = up.PublicIP
	}
	if cfg.EnableIPv6() {
		if !up.PublicIP6.IsValid() {
			return f, fmt.Errorf("the network has IPv6 and interface %s has no global IPv6 address: give --public-ipv6", up.Name)
		}
		if cfg.Dual() {
			f.publicIP6 = up.PublicIP6
			f.mac6 = ip.VTEPMAC(f.publicIP6, vni)
			f.devices = append(f.devices, vxlan.DefaultName(vni, true))
		} else {
			f.publicIP = up.PublicIP6
		}
	}
	f.mac = ip.VTEPMAC(f.publicIP, vni)
	f.devices = append([]string{vxlan.DefaultName(vni, f.publicIP.Is6())}, f.devices...)
	return f, nil
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
