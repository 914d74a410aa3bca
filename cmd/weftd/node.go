package main

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

// nodeSource is where the node's subnet and peers come from, the one part
// of the node that differs between etcd mode (subnet.Registry) and
// Kubernetes mode (kube.Manager). newNode builds everything else the same
// way for both.
type nodeSource struct {
	holder interface {
		Hold(context.Context, subnet.HoldRequest) error
	}
	watcher interface {
		WatchPeers(context.Context, subnet.PeerFilter, func(subnet.Snapshot)) error
		Recycle(subnet.Snapshot)
	}
	// config follows the network config (etcd mode); nil when the config
	// is a file read at start (Kubernetes mode).
	config interface {
		WatchConfig(ctx context.Context, rev int64, out func(subnet.ConfigUpdate)) error
	}
	configRev int64
	synced    func() time.Time // when the view of the peers was last current, for /readyz
}

// newNode is the node of either mode: the VXLAN devices of the network's
// families on the uplink, the rules, the ingress filter and the loop that
// ties src to them. It is the only place that fills network.NodeConfig, so
// a field added there is wired in both modes or in neither.
func (a *agent) newNode(cfg subnet.Config, up network.Uplink, src nodeSource, promReg *prometheus.Registry) (*network.Node, error) {
	o, log := a.opts, a.log
	vni := cfg.Backend.VNI
	fam, err := families(cfg, up)
	if err != nil {
		return nil, err
	}
	ours := func(dst netip.Prefix, proto, metric int) bool {
		return (vxlan.IsDirectRoute(cfg.Network, dst, proto, metric) ||
			cfg.Dual() && vxlan.IsDirectRoute(cfg.IPv6.Network, dst, proto, metric))
	}
	avoid, err := network.HostPrefixesExcept(ours, fam.devices...)
	if err != nil {
		return nil, err
	}
	logArgs := []any{"network", cfg.Network, "subnet_len", cfg.SubnetLen, "vni", vni,
		"uplink", up.Name, "public_ip", fam.publicIP, "vtep_mac", fam.mac.String()}
	if cfg.Dual() {
		logArgs = append(logArgs, "ipv6_network", cfg.IPv6.Network, "public_ipv6", fam.publicIP6, "vtep_mac6", fam.mac6.String())
	}
	log.Info("network config", logArgs...)
	release := o.kernelRelease
	if release == "" {
		release = kernelRelease()
	}
	txOn, why, err := network.ChecksumPolicy(o.txChecksum, release)
	if err != nil {
		return nil, err
	}
	log.Info("tx checksum offload of the VXLAN devices", "on", txOn, "why", why)
	newDevice := func(local netip.Addr, mac net.HardwareAddr, own netip.Prefix) (network.Dataplane, error) {
		overlay := cfg.Network
		if local.Is6() && cfg.Dual() {
			overlay = cfg.IPv6.Network
		}
		var onLink []netip.Prefix
		for _, p := range up.Networks {
			if p.Addr().Is6() == local.Is6() {
				onLink = append(onLink, p)
			}
		}
		return newVXLAN(vxlan.Config{
			Name:        vxlan.DefaultName(vni, local.Is6()),
			VNI:         vni,
			Port:        cfg.Backend.Port,
			Local:       local,
			UplinkIndex: up.Index,
			MTU:         cfg.Backend.MTU,
			MAC:         mac,
			Subnet:      own,
			TxChecksum:  &txOn,

			DirectRouting: cfg.Backend.DirectRouting,
			OnLink:        onLink,
			Network:       overlay,
		}, log, promReg)
	}

	nc := network.NodeConfig{
		Config:         cfg,
		PublicIP:       fam.publicIP,
		Underlay:       up.Networks,
		UplinkName:     up.Name,
		Avoid:          avoid,
		LeaseTTL:       o.leaseTTL,
		SubnetFile:     o.subnetFile,
		IPMasq:         o.ipMasq,
		ResyncInterval: o.resyncInterval,
		RulesInterval:  o.iptablesResync,
		Leases: subnet.LeaseAttrs{PublicIP: fam.publicIP, BackendType: "vxlan", VNI: vni, VtepMAC: fam.mac,
			PublicIP6: fam.publicIP6, VtepMAC6: fam.mac6},
		Holder:         src.holder,
		Watcher:        src.watcher,
		ConfigRevision: src.configRev,
		EtcdSynced:     src.synced,
		NewDataplane: func(own subnet.Lease) (network.Dataplane, error) {
			first, err := newDevice(fam.publicIP, fam.mac, own.Subnet)
			if err != nil || !own.Subnet6.IsValid() {
				return first, err
			}
			v6, err := newDevice(fam.publicIP6, fam.mac6, own.Subnet6)
			if err != nil {
				first.Close()
				return nil, err
			}
			return network.NewDualStack(first, v6), nil
		},
		NewRules: func(rc network.RulesConfig) (network.RuleSet, error) {
			r, err := network.NewRules(rc, log)
			if err != nil {
				return nil, err
			}
			return r, nil
		},
		SkipForward: !o.forwardRules,
		NewIngress: func(ic network.IngressConfig) (network.IngressFilter, error) {
			g, err := network.NewIngress(ic, log)
			if err != nil {
				return nil, err
			}
			return g, nil
		},
		VXLANPort:    cfg.Backend.Port,
		AllowVXLAN:   o.vxlanAllowNets,
		HostPrefixes: func() ([]netip.Prefix, error) { return network.HostPrefixesExcept(ours, fam.devices...) },
		Log:          log,
		Metrics:      network.NewMetrics(promReg),
	}
	if src.config != nil { // a nil interface, not a typed nil, when there is none
		nc.ConfigWatcher = src.config
	}
	return network.NewNode(nc)
}
