package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/peer"
)

// DefaultPrefix is flannel's annotation prefix (--kube-annotation-prefix).
const DefaultPrefix = "flannel.alpha.coreos.com"

// The annotation names after the prefix and a slash, flannel's.
const (
	annBackendData       = "backend-data"
	annBackendType       = "backend-type"
	annPublicIP          = "public-ip"
	annSubnetManaged     = "kube-subnet-manager"
	annPublicIPOverwrite = "public-ip-overwrite"
)

// annotations are the full annotation names for one prefix.
type annotations struct {
	backendData, backendType, publicIP, managed, overwrite string
}

// CheckPrefix reports whether p can prefix annotation names: a DNS subdomain
// (lower-case letters, digits, dots and dashes), as Kubernetes requires of
// an annotation key's prefix.
func CheckPrefix(p string) error {
	if p == "" || len(p) > 253 {
		return fmt.Errorf("annotation prefix %q: must be 1 to 253 characters", p)
	}
	for _, label := range strings.Split(p, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("annotation prefix %q: not a DNS subdomain such as %s", p, DefaultPrefix)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("annotation prefix %q: not a DNS subdomain such as %s", p, DefaultPrefix)
			}
		}
	}
	return nil
}

func newAnnotations(prefix string) annotations {
	k := func(name string) string { return prefix + "/" + name }
	return annotations{
		backendData: k(annBackendData),
		backendType: k(annBackendType),
		publicIP:    k(annPublicIP),
		managed:     k(annSubnetManaged),
		overwrite:   k(annPublicIPOverwrite),
	}
}

// numAnn is the number of annotations weft reads.
const numAnn = 5

// names lists the annotations weft reads, in nodeRecord's order.
func (a annotations) names() [numAnn]string {
	return [...]string{a.backendData, a.backendType, a.publicIP, a.managed, a.overwrite}
}

// backendData is the JSON of <prefix>/backend-data for the vxlan backend.
type backendData struct {
	VNI     uint32
	VtepMAC string
}

// publish returns the annotations this node writes, exactly as flanneld
// writes them.
func (a annotations) publish(publicIP netip.Addr, vni uint32, mac net.HardwareAddr) map[string]string {
	data, _ := json.Marshal(backendData{VNI: vni, VtepMAC: mac.String()})
	return map[string]string{
		a.backendData: string(data),
		a.backendType: "vxlan",
		a.publicIP:    publicIP.String(),
		a.managed:     "true",
	}
}

// errNotPublished says a Node carries none of weft's annotations: no weftd
// or flanneld runs there (yet). That is not a fault.
var errNotPublished = errors.New("no kube-subnet-manager annotation")

// parsePeer reads the peer a Node describes: its podCIDR and its
// annotations, checked by the lease rulebook's static rules and against the
// network's VNI. errNotPublished means the Node is not (yet) a peer and is
// no fault; any other error names what is wrong.
func (a annotations) parsePeer(podCIDR string, ann map[string]string, vni uint32, n peer.Network) (peer.Peer, error) {
	if v, ok := ann[a.managed]; !ok {
		return peer.Peer{}, errNotPublished
	} else if v != "true" {
		return peer.Peer{}, fmt.Errorf("annotation %s %q: want \"true\"", a.managed, v)
	}
	var p peer.Peer
	if podCIDR == "" {
		return p, errors.New("spec.podCIDR: not assigned")
	}
	s, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		return p, fmt.Errorf("spec.podCIDR %q: not a prefix", podCIDR)
	}
	p.Subnet = s
	if t := ann[a.backendType]; t != "vxlan" {
		return p, fmt.Errorf("annotation %s %q: only vxlan is supported", a.backendType, t)
	}
	raw, ok := ann[a.backendData]
	if !ok {
		return p, fmt.Errorf("annotation %s: missing", a.backendData)
	}
	var bd backendData
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&bd); err != nil || dec.More() {
		return p, fmt.Errorf("annotation %s %q: not {\"VNI\":n,\"VtepMAC\":\"..\"}", a.backendData, raw)
	}
	if bd.VNI != 0 && bd.VNI != vni {
		return p, fmt.Errorf("annotation %s: VNI %d, but the network uses VNI %d", a.backendData, bd.VNI, vni)
	}
	if p.VtepMAC, err = net.ParseMAC(bd.VtepMAC); err != nil {
		return p, fmt.Errorf("annotation %s: VtepMAC %q: %w", a.backendData, bd.VtepMAC, err)
	}
	// Peers read public-ip only, as flanneld does: a node's own agent
	// copies its public-ip-overwrite there.
	ipText := ann[a.publicIP]
	if p.PublicIP, err = netip.ParseAddr(ipText); err != nil {
		return p, fmt.Errorf("annotation %s %q: not an IP address", a.publicIP, ipText)
	}
	if err := peer.CheckLease(&p, n); err != nil {
		return p, err
	}
	return p, nil
}

// overwriteIP returns the node's public-ip-overwrite annotation, if it
// holds an address; an unparseable one is an error naming it.
func (a annotations) overwriteIP(ann map[string]string) (netip.Addr, error) {
	v, ok := ann[a.overwrite]
	if !ok || v == "" {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("annotation %s %q: not an IPv4 address", a.overwrite, v)
	}
	return ip, nil
}
