package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/subnet"
)

// Hold takes this node's subnet, the podCIDR of its Node, and publishes the
// node's annotations there; it calls OnLease with the subnet, and again if
// the podCIDR ever changes. It waits, saying why, while the Node does not
// exist or has no podCIDR yet, puts the annotations back if they are lost or
// altered, and returns only when ctx ends (ctx.Err()) or the podCIDR cannot
// be used (outside the network), which the caller retries.
func (m *Manager) Hold(ctx context.Context, req subnet.HoldRequest) error {
	want := m.ann.publish(req.PublicIP, req.Config.Backend.VNI, req.VtepMAC)
	var (
		held    netip.Prefix
		waiting string           // why we wait, logged when it changes
		retry   <-chan time.Time // a failed patch is tried again
		backoff = time.Second
	)
	for {
		m.mu.Lock()
		self := m.self
		m.mu.Unlock()
		why := ""
		switch {
		case self == nil:
			why = fmt.Sprintf("waiting for Node %s to exist", m.cfg.NodeName)
		case self.PodCIDR == "":
			why = fmt.Sprintf("waiting for the controller manager to assign spec.podCIDR to Node %s", m.cfg.NodeName)
		}
		if why != waiting && why != "" {
			m.log.Warn(why)
		}
		waiting = why
		if self != nil && why == "" {
			s, err := m.podCIDR(self.PodCIDR)
			if err != nil {
				return err
			}
			if s != held {
				held = s
				m.mu.Lock()
				m.own = s
				m.rev++
				m.mu.Unlock()
				kick(m.peerKick)
				m.log.Info("the node's subnet is its podCIDR", "node", m.cfg.NodeName, "subnet", s)
				req.OnLease(subnet.Lease{Subnet: s, Attrs: subnet.LeaseAttrs{
					PublicIP: req.PublicIP, BackendType: "vxlan", VNI: req.Config.Backend.VNI, VtepMAC: req.VtepMAC}})
			}
			if retry == nil && !published(self.annotations(m.ann), want) {
				if err := m.patchAnnotations(ctx, want); err != nil {
					m.log.Error("publishing the node's annotations, will retry", "node", m.cfg.NodeName, "err", err, "in", backoff)
					retry = time.After(backoff)
					backoff = min(2*backoff, 30*time.Second)
				} else {
					backoff = time.Second
					m.log.Info("published the node's annotations", "node", m.cfg.NodeName, "public_ip", req.PublicIP, "vtep_mac", req.VtepMAC)
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.selfKick:
		case <-retry:
			retry = nil
		}
	}
}

// podCIDR parses and checks the node's own podCIDR.
func (m *Manager) podCIDR(v string) (netip.Prefix, error) {
	s, err := netip.ParsePrefix(v)
	switch {
	case err != nil:
		return s, fmt.Errorf("spec.podCIDR %q of Node %s: not a prefix", v, m.cfg.NodeName)
	case s.Masked() != s || !s.Addr().Is4():
		return s, fmt.Errorf("spec.podCIDR %v of Node %s: not an IPv4 network address", s, m.cfg.NodeName)
	case !m.cfg.Network.Network.Contains(s.Addr()) || s.Bits() < m.cfg.Network.Network.Bits():
		return s, fmt.Errorf("spec.podCIDR %v of Node %s: outside the Network %v of net-conf.json", s, m.cfg.NodeName, m.cfg.Network.Network)
	}
	return s, nil
}

// published reports whether have carries every annotation in want.
func published(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// patchAnnotations writes the node's annotations with a merge patch, which
// leaves every other annotation alone.
func (m *Manager) patchAnnotations(ctx context.Context, ann map[string]string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": maps.Clone(ann)}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = m.cfg.Nodes.Patch(ctx, m.cfg.NodeName, types.MergePatchType, body, metav1.PatchOptions{})
	return err
}

// SetNetworkAvailable sets the Node's NetworkUnavailable condition to false,
// as flanneld does once its data plane is up (--set-node-network-unavailable).
func (m *Manager) SetNetworkAvailable(ctx context.Context) error {
	now := metav1.Now()
	// A core/v1 NodeCondition, by its JSON names.
	cond := map[string]any{
		"type":               "NetworkUnavailable",
		"status":             "False",
		"reason":             "WeftIsUp",
		"message":            "weftd is running on this node",
		"lastTransitionTime": now,
		"lastHeartbeatTime":  now,
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []any{cond}}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = m.cfg.Nodes.Patch(ctx, m.cfg.NodeName, types.StrategicMergePatchType, body, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("setting Node %s's NetworkUnavailable condition to false: %w", m.cfg.NodeName, err)
	}
	return nil
}

// PublicIPOverwrite waits for this node's Node and returns its
// public-ip-overwrite annotation: the address to publish and send VXLAN
// from instead of the interface's. It returns the zero Addr when the Node
// has none.
func (m *Manager) PublicIPOverwrite(ctx context.Context) (netip.Addr, error) {
	logged := false
	for {
		m.mu.Lock()
		self := m.self
		m.mu.Unlock()
		if self != nil {
			return m.ann.overwriteIP(self.annotations(m.ann))
		}
		if !logged && m.ctrl.HasSynced() {
			m.log.Warn("waiting for this node's Node object", "node", m.cfg.NodeName)
			logged = true
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, ctx.Err()
		case <-m.selfKick:
			kick(m.selfKick) // Hold wants it too
		case <-time.After(time.Second):
		}
	}
}
