package network

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weft-net/weft/subnet"
)

// Status is what the node reports about itself: the lease it holds, whether the
// data plane matches etcd, and when things last happened. It backs /readyz,
// /status and `weftctl status`.
type Status struct {
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"publicIP"`
	VtepMAC  string       `json:"vtepMAC"`
	// Subnet6, PublicIP6 and VtepMAC6 are the IPv6 half of a dual-stack node.
	Subnet6       netip.Prefix `json:"subnet6,omitzero"`
	PublicIP6     netip.Addr   `json:"publicIP6,omitzero"`
	VtepMAC6      string       `json:"vtepMAC6,omitempty"`
	HasLease      bool         `json:"hasLease"`
	LeaseExpiry   time.Time    `json:"leaseExpiry,omitzero"`
	SubnetFile    bool         `json:"subnetFileWritten"`
	InSync        bool         `json:"inSync"`
	Desired       int          `json:"peersDesired"`
	Programmed    int          `json:"peersProgrammed"`
	LastReconcile time.Time    `json:"lastReconcile,omitzero"`
	LastEtcdSync  time.Time    `json:"lastEtcdSync,omitzero"`
	LastBeat      time.Time    `json:"lastLoop"`
	// ConfigRevision is the mod revision of the config key the node runs
	// with; ConfigPending says why a newer config in etcd is not applied
	// (it needs a restart, or it is invalid), empty when none waits.
	ConfigRevision int64  `json:"configRevision,omitempty"`
	ConfigPending  string `json:"configPending,omitempty"`
}

// Status returns a copy of the node's current status.
func (n *Node) Status() Status {
	n.mu.Lock()
	st := n.st
	n.mu.Unlock()
	if n.cfg.EtcdSynced != nil {
		st.LastEtcdSync = n.cfg.EtcdSynced()
	}
	return st
}

// NotReady lists, one line each, why the node is not ready to carry traffic;
// none means it is. etcdSyncedWithin is how stale the last contact with etcd
// may be (--ready-etcd-grace).
func (s Status) NotReady(now time.Time, etcdSyncedWithin time.Duration) []string {
	var why []string
	if !s.HasLease {
		why = append(why, "no lease: the node holds no subnet yet")
	}
	if !s.SubnetFile {
		why = append(why, "subnet file not written yet")
	}
	if !s.InSync {
		why = append(why, fmt.Sprintf("data plane does not match the last snapshot (%d peers desired, %d programmed)", s.Desired, s.Programmed))
	}
	if s.LastEtcdSync.IsZero() {
		why = append(why, "etcd never in sync")
	} else if age := now.Sub(s.LastEtcdSync); age > etcdSyncedWithin {
		why = append(why, fmt.Sprintf("etcd last in sync %s ago (grace %s)", age.Round(time.Second), etcdSyncedWithin))
	}
	return why
}

// Alive reports whether the main loop turned recently.
func (s Status) Alive(now time.Time) bool {
	return !s.LastBeat.IsZero() && now.Sub(s.LastBeat) < 10*time.Second
}

func (n *Node) beat() {
	n.mu.Lock()
	n.st.LastBeat = time.Now()
	n.mu.Unlock()
}

func (n *Node) setLease(l subnet.Lease) {
	n.mu.Lock()
	n.st.Subnet = l.Subnet
	n.st.Subnet6 = l.Subnet6
	n.st.HasLease = true
	if l.EtcdLeaseID == 0 { // a reservation never expires
		n.st.LeaseExpiry = time.Time{}
		n.m.leaseExpiry.Reset()
	}
	n.mu.Unlock()
	n.m.setLease(l, n.cfg.PublicIP, n.cfg.Leases.VtepMAC.String())
}

func (n *Node) setLeaseExpiry(t time.Time) {
	n.mu.Lock()
	n.st.LeaseExpiry = t
	n.mu.Unlock()
	n.m.leaseExpiry.WithLabelValues().Set(float64(t.UnixNano()) / 1e9)
}

// setPeers records how many peers are desired and programmed; programmed < 0
// leaves the programmed count as it was.
func (n *Node) setPeers(desired, programmed int) {
	n.m.peersDesired.Set(float64(desired))
	n.mu.Lock()
	n.st.Desired = desired
	if programmed >= 0 {
		n.st.Programmed = programmed
		n.m.peersProgrammed.Set(float64(programmed))
	}
	n.mu.Unlock()
}

func (n *Node) markEnvWritten(v bool) {
	n.mu.Lock()
	n.st.SubnetFile = v
	n.mu.Unlock()
}

func (n *Node) envWritten() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st.SubnetFile
}

func (n *Node) setSynced(v bool) {
	n.mu.Lock()
	n.st.InSync = v
	n.mu.Unlock()
}
