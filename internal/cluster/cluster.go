// Package cluster builds a whole weft cluster out of network namespaces on one machine, for
// the end-to-end tests and `weftctl demo`. It rebuilds REFERENCE.md's picture: an underlay
// switch (bridge br0 in namespace "<prefix>ul"), hosts with eth0 on that switch (master with
// etcd, node1..N with weftd, an "outside" host), and on each node a docker0 bridge with
// containers behind it, each container its own namespace.
//
// Network safety is structural, not a convention. The package never creates, changes or
// deletes anything in the calling process's namespace: every `ip` invocation goes through
// ipIn, which always passes `-n NS` for a namespace this cluster created, or through ipNetns
// for the `ip netns add|del|exec|pids|list` administration. Links are created directly
// inside their namespaces (`ip -n A link add eth0 type veth peer name u-x netns B`), so no
// link ever exists in the host namespace, not even for a moment, and nothing created has a
// route to the machine's real interfaces. The calling goroutine's thread never changes
// namespace; processes run in a namespace via `ip netns exec`, which execs the command in
// place (no extra fork), so a Proc's pid is the real program's pid.
//
// Everything is torn down by Close: started processes get SIGTERM, then SIGKILL, any other
// process still inside one of the namespaces (`ip netns pids`) is killed, and the
// namespaces are deleted, newest first. Started processes also carry Pdeathsig=SIGKILL, so a
// test binary that dies on a timeout does not leave daemons behind. Sweep removes the
// namespaces (and their processes) of a crashed run by name prefix; it refuses any prefix
// that does not start with "weft-", so it cannot touch namespaces it did not make.
//
// Setup shells out to iproute2 on purpose: each step is one readable command, logged at
// debug level, that a person can paste into a shell to reproduce a failing test by hand.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// SafePrefix is what every namespace name made by this package starts with.
const SafePrefix = "weft-"

// Options configure a Cluster. The zero value is usable.
type Options struct {
	// Prefix starts every namespace name, e.g. "weft-3fa9c1-" gives "weft-3fa9c1-node1".
	// It must start with SafePrefix. Default: "weft-" + 6 random hex digits + "-".
	Prefix string
	// Log receives one debug line per command run. Default: discard.
	Log *slog.Logger
	// Dir holds process logs (<host>-<name>.log). Default: a new temporary directory,
	// kept after Close so logs of a failed run can be read.
	Dir string
}

// Cluster is a set of namespaces wired to one underlay switch.
type Cluster struct {
	Prefix   string
	Underlay string // namespace of the switch, "<prefix>ul"
	Dir      string
	log      *slog.Logger

	mu         sync.Mutex // guards the fields below
	namespaces []string   // in creation order; deleted newest first
	hosts      map[string]*Host
	procs      []*Proc
	closed     bool
}

// nameRE keeps names short enough for interface names ("u-"+host, "veth-"+container, at most
// 15 bytes) and free of '-' so "<host>-<container>" never collides with another host's name.
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

func checkName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: want 1-10 of [a-z0-9], starting with a letter", kind, name)
	}
	return nil
}

// New creates the underlay namespace with bridge br0 up, the switch every host's eth0 is
// plugged into.
func New(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Prefix == "" {
		b := make([]byte, 3)
		rand.Read(b)
		opts.Prefix = SafePrefix + hex.EncodeToString(b) + "-"
	}
	if !strings.HasPrefix(opts.Prefix, SafePrefix) {
		return nil, fmt.Errorf("namespace prefix %q must start with %q", opts.Prefix, SafePrefix)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "weft-cluster-")
		if err != nil {
			return nil, fmt.Errorf("creating log directory: %w", err)
		}
		opts.Dir = dir
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	c := &Cluster{
		Prefix:   opts.Prefix,
		Underlay: opts.Prefix + "ul",
		Dir:      opts.Dir,
		log:      opts.Log.With("component", "cluster"),
		hosts:    map[string]*Host{},
	}
	err := c.addNamespace(ctx, c.Underlay)
	if err == nil {
		err = c.steps(ctx, c.Underlay,
			"link add br0 type bridge",
			"link set br0 up")
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("creating underlay switch: %w", err), c.Close())
	}
	c.log.Info("cluster created", "prefix", c.Prefix, "dir", c.Dir)
	return c, nil
}

// addNamespace creates ns with lo up and records it for Close.
func (c *Cluster) addNamespace(ctx context.Context, ns string) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("cluster is closed")
	}
	c.namespaces = append(c.namespaces, ns) // recorded first: a half-made one is still removed
	c.mu.Unlock()
	if _, err := ipNetns(ctx, c.log, "add", ns); err != nil {
		return err
	}
	_, err := ipIn(ctx, c.log, ns, "link", "set", "lo", "up")
	return err
}

// steps runs each space-separated `ip -n ns ...` command in order, stopping at the first error.
func (c *Cluster) steps(ctx context.Context, ns string, cmds ...string) error {
	for _, cmd := range cmds {
		if _, err := ipIn(ctx, c.log, ns, strings.Fields(cmd)...); err != nil {
			return err
		}
	}
	return nil
}

// AddHost creates namespace "<prefix><name>" with eth0 (mtu 1500) plugged into the switch,
// addressed addr (e.g. 172.17.42.31/16), lo up and no default route.
func (c *Cluster) AddHost(ctx context.Context, name string, addr netip.Prefix) (*Host, error) {
	if err := checkName("host", name); err != nil {
		return nil, err
	}
	if name == "ul" {
		return nil, errors.New(`host name "ul" is the underlay's`)
	}
	if !addr.IsValid() {
		return nil, fmt.Errorf("host %s: invalid address", name)
	}
	h := &Host{Name: name, NS: c.Prefix + name, Addr: addr, cluster: c}
	c.mu.Lock()
	_, dup := c.hosts[name]
	if !dup {
		c.hosts[name] = h
	}
	c.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("host %s exists", name)
	}
	port := "u-" + name
	err := c.addNamespace(ctx, h.NS)
	if err == nil {
		err = c.steps(ctx, h.NS, "link add eth0 mtu 1500 type veth peer name "+port+" mtu 1500 netns "+c.Underlay)
	}
	if err == nil {
		err = c.steps(ctx, c.Underlay, "link set "+port+" master br0 up")
	}
	if err == nil {
		err = c.steps(ctx, h.NS, "addr add "+addr.String()+" dev eth0", "link set eth0 up")
	}
	if err != nil {
		return nil, fmt.Errorf("adding host %s: %w", name, err)
	}
	c.log.Info("host added", "host", name, "ns", h.NS, "addr", addr)
	return h, nil
}

// Host returns the host added under name, or nil.
func (c *Cluster) Host(name string) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[name]
}

func (c *Cluster) track(p *Proc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster is closed")
	}
	c.procs = append(c.procs, p)
	return nil
}

// Close stops the processes it started (SIGTERM, then SIGKILL after 3s), kills anything else
// left inside its namespaces and deletes them. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	procs, namespaces := c.procs, c.namespaces
	c.procs, c.namespaces, c.closed = nil, nil, true
	c.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.Stop(3 * time.Second) })
	}
	wg.Wait()
	var errs []error
	for _, ns := range slices.Backward(namespaces) {
		errs = append(errs, removeNamespace(c.log, ns))
	}
	return errors.Join(errs...)
}

// removeNamespace kills every process in ns and deletes it. A missing ns is not an error.
func removeNamespace(log *slog.Logger, ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := killAll(ctx, log, ns); err != nil {
		return fmt.Errorf("removing namespace %s: %w", ns, err)
	}
	if out, err := ipNetns(ctx, log, "del", ns); err != nil && !strings.Contains(out, "No such file") {
		return fmt.Errorf("removing namespace %s: %w", ns, err)
	}
	return nil
}

// Sweep deletes every namespace whose name starts with prefix, killing the processes in
// it: the leftovers of a run that crashed before Close. prefix must start with "weft-";
// Sweep("weft-") removes every run's namespaces, including a concurrent one's.
func Sweep(prefix string) error {
	if !strings.HasPrefix(prefix, SafePrefix) {
		return fmt.Errorf("sweeping namespaces: prefix %q must start with %q", prefix, SafePrefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := discard
	names, err := listNamespaces(ctx, log)
	if err != nil {
		return fmt.Errorf("sweeping namespaces: %w", err)
	}
	var errs []error
	for _, ns := range names {
		if strings.HasPrefix(ns, prefix) {
			errs = append(errs, removeNamespace(log, ns))
		}
	}
	return errors.Join(errs...)
}

// listNamespaces returns the names from `ip netns list` ("name" or "name (id: 3)").
func listNamespaces(ctx context.Context, log *slog.Logger) ([]string, error) {
	out, err := ipNetns(ctx, log, "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}
