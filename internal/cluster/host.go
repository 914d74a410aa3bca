package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
)

// VXLANDevice is the device the observation helpers look at, as flannel names it for VNI 1.
const VXLANDevice = "flannel.1"

// Host is one machine of the cluster: a namespace with eth0 on the underlay switch.
type Host struct {
	Name string
	NS   string
	Addr netip.Prefix // eth0's address, e.g. 172.17.42.31/16

	cluster *Cluster

	mu      sync.Mutex   // guards the fields below
	docker0 netip.Prefix // gateway address with length, e.g. 172.16.28.1/24; invalid until SetupDocker0
	mtu     int
}

// Run runs args inside the host's namespace (`ip netns exec`) and returns the combined
// output; the error includes the output.
func (h *Host) Run(ctx context.Context, args ...string) (string, error) {
	return execIn(ctx, h.cluster.log, h.NS, args...)
}

// IP runs `ip -n NS args...`, for observations the helpers below do not cover.
func (h *Host) IP(ctx context.Context, args ...string) (string, error) {
	return ipIn(ctx, h.cluster.log, h.NS, args...)
}

// Routes returns `ip route` as the host sees it.
func (h *Host) Routes(ctx context.Context) (string, error) { return h.IP(ctx, "route") }

// Neigh returns `ip neigh show dev flannel.1`.
func (h *Host) Neigh(ctx context.Context) (string, error) {
	return h.IP(ctx, "neigh", "show", "dev", VXLANDevice)
}

// FDB returns `bridge fdb show dev flannel.1`.
func (h *Host) FDB(ctx context.Context) (string, error) {
	return bridgeIn(ctx, h.cluster.log, h.NS, "fdb", "show", "dev", VXLANDevice)
}

// LinkDetail returns `ip -d link show flannel.1`.
func (h *Host) LinkDetail(ctx context.Context) (string, error) {
	return h.IP(ctx, "-d", "link", "show", VXLANDevice)
}

// SetupDocker0 makes docker0 a bridge, up, with address subnet (the FLANNEL_SUBNET form,
// gateway .1 with the subnet's length) and mtu, and turns on IP forwarding in the host.
// Calling it again converges: a new subnet replaces the old address (containers made
// before keep their old addresses; remove and re-add them).
func (h *Host) SetupDocker0(ctx context.Context, subnet netip.Prefix, mtu int) error {
	if !subnet.IsValid() || subnet.Addr() == subnet.Masked().Addr() || mtu < 68 {
		return fmt.Errorf("setting up docker0 on %s: want gateway/len and mtu >= 68, got %v, %d", h.Name, subnet, mtu)
	}
	if err := h.setupDocker0(ctx, subnet, mtu); err != nil {
		return fmt.Errorf("setting up docker0 on %s: %w", h.Name, err)
	}
	h.mu.Lock()
	h.docker0, h.mtu = subnet, mtu
	h.mu.Unlock()
	return nil
}

func (h *Host) setupDocker0(ctx context.Context, subnet netip.Prefix, mtu int) error {
	links, err := h.links(ctx)
	if err != nil {
		return err
	}
	c := h.cluster
	if _, ok := links["docker0"]; !ok {
		if err := c.steps(ctx, h.NS, "link add docker0 type bridge"); err != nil {
			return err
		}
	}
	if err := c.steps(ctx, h.NS, "link set docker0 mtu "+strconv.Itoa(mtu)); err != nil {
		return err
	}
	// Add before delete, so the bridge is never without an address it should have.
	have := links["docker0"]
	if !have.has(subnet) {
		if err := c.steps(ctx, h.NS, "addr add "+subnet.String()+" dev docker0"+noDAD(subnet.Addr())); err != nil {
			return err
		}
	}
	for _, a := range have.global() {
		if a != subnet {
			if err := c.steps(ctx, h.NS, "addr del "+a.String()+" dev docker0"); err != nil {
				return err
			}
		}
	}
	if err := c.steps(ctx, h.NS, "link set docker0 up"); err != nil {
		return err
	}
	key := "net.ipv4.ip_forward=1"
	if subnet.Addr().Is6() {
		key = "net.ipv6.conf.all.forwarding=1"
	}
	_, err = h.Run(ctx, "sysctl", "-qw", key)
	return err
}

// link is the part of `ip -j addr show` this package reads.
type link struct {
	Name  string `json:"ifname"`
	MTU   int    `json:"mtu"`
	Addrs []struct {
		Local  string `json:"local"`
		Len    int    `json:"prefixlen"`
		Scope  string `json:"scope"`
		Family string `json:"family"`
	} `json:"addr_info"`
}

func (l link) global() []netip.Prefix {
	var out []netip.Prefix
	for _, a := range l.Addrs {
		if a.Scope != "global" {
			continue
		}
		if addr, err := netip.ParseAddr(a.Local); err == nil {
			out = append(out, netip.PrefixFrom(addr, a.Len))
		}
	}
	return out
}

func (l link) has(p netip.Prefix) bool {
	for _, a := range l.global() {
		if a == p {
			return true
		}
	}
	return false
}

// links returns the host's links with their addresses, by name.
func (h *Host) links(ctx context.Context) (map[string]link, error) {
	out, err := h.IP(ctx, "-j", "addr", "show")
	if err != nil {
		return nil, err
	}
	var list []link
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("reading links of %s: %w", h.NS, err)
	}
	m := make(map[string]link, len(list))
	for _, l := range list {
		m[l.Name] = l
	}
	return m, nil
}

// Docker0 returns the address and mtu given to SetupDocker0 (invalid, 0 before).
func (h *Host) Docker0() (netip.Prefix, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.docker0, h.mtu
}

// Container is a namespace behind a host's docker0, like a Docker container.
type Container struct {
	Name string
	NS   string // "<prefix><host>-<name>"
	Addr netip.Addr
	Host *Host
}

// AddContainer creates namespace "<prefix><host>-<name>" with eth0 (mtu = docker0's) whose
// peer "veth-<name>" is attached to docker0, addr with docker0's prefix length, lo up and a
// default route via docker0's address. SetupDocker0 must have run.
func (h *Host) AddContainer(ctx context.Context, name string, addr netip.Addr) (*Container, error) {
	if err := checkName("container", name); err != nil {
		return nil, err
	}
	gw, mtu := h.Docker0()
	if !gw.IsValid() {
		return nil, fmt.Errorf("adding container %s on %s: docker0 is not set up", name, h.Name)
	}
	if !gw.Masked().Contains(addr) || addr == gw.Addr() {
		return nil, fmt.Errorf("adding container %s on %s: %v is not a free address in %v", name, h.Name, addr, gw.Masked())
	}
	ct := &Container{Name: name, NS: h.NS + "-" + name, Addr: addr, Host: h}
	c, port, m := h.cluster, "veth-"+name, strconv.Itoa(mtu)
	err := c.addNamespace(ctx, ct.NS)
	if err == nil {
		err = c.steps(ctx, ct.NS, "link add eth0 mtu "+m+" type veth peer name "+port+" mtu "+m+" netns "+h.NS)
	}
	if err == nil {
		err = c.steps(ctx, h.NS, "link set "+port+" master docker0 up")
	}
	if err == nil {
		err = c.steps(ctx, ct.NS,
			"addr add "+netip.PrefixFrom(addr, gw.Bits()).String()+" dev eth0"+noDAD(addr),
			"link set eth0 up",
			"route add default via "+gw.Addr().String()+" dev eth0")
	}
	if err != nil {
		return nil, fmt.Errorf("adding container %s on %s: %w", name, h.Name, err)
	}
	c.log.Info("container added", "host", h.Name, "container", name, "addr", addr)
	return ct, nil
}

// Run runs args inside the container's namespace; see Host.Run.
func (ct *Container) Run(ctx context.Context, args ...string) (string, error) {
	return execIn(ctx, ct.Host.cluster.log, ct.NS, args...)
}

// Remove kills the container's processes and deletes its namespace (and so its veth pair),
// e.g. to re-add it after the host's subnet changed. Close does this for the rest.
func (ct *Container) Remove() error {
	c := ct.Host.cluster
	if err := removeNamespace(c.log, ct.NS); err != nil {
		return fmt.Errorf("removing container %s: %w", ct.Name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.namespaces = slices.DeleteFunc(c.namespaces, func(ns string) bool { return ns == ct.NS })
	return nil
}

// noDAD is " nodad" for an IPv6 address: without it the address stays
// tentative for a second or two, and a ping sent meanwhile leaves from the
// link-local address, which a router answers with "beyond scope of source
// address".
func noDAD(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return " nodad"
	}
	return ""
}
