package network

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SubnetEnv is the content of subnet.env, the file Docker's --bip and --mtu
// and the flannel CNI plugin read. The format is flannel's, so tools written
// for flannel work with weft unchanged.
type SubnetEnv struct {
	Network netip.Prefix // the whole overlay, e.g. 172.16.0.0/12
	// Subnet is the first host address of the node's lease with the lease's
	// length, e.g. 172.16.28.1/24: the address the bridge takes (Docker --bip).
	Subnet netip.Prefix
	// Network6 and Subnet6 are flannel's FLANNEL_IPV6_NETWORK and
	// FLANNEL_IPV6_SUBNET (fd42::/48, fd42:0:0:1c::1/64): set in a
	// dual-stack or IPv6-only network. An IPv6-only network has no
	// Network and Subnet.
	Network6 netip.Prefix
	Subnet6  netip.Prefix
	MTU      int
	IPMasq   bool
	// EtcdLease is the etcd lease the node's key was attached to, 0 if
	// none; weft's own line, which flannel's readers ignore. After a
	// restart it proves which key was this node's (subnet.HoldRequest's
	// PreviousLease).
	EtcdLease int64
}

// The keys of subnet.env, in the order they are written.
const (
	envNetwork  = "FLANNEL_NETWORK"
	envSubnet   = "FLANNEL_SUBNET"
	envNetwork6 = "FLANNEL_IPV6_NETWORK"
	envSubnet6  = "FLANNEL_IPV6_SUBNET"
	envMTU      = "FLANNEL_MTU"
	envIPMasq   = "FLANNEL_IPMASQ"
	envLease    = "WEFT_ETCD_LEASE" // optional, hexadecimal as etcdctl prints it
)

// Lease is the node's first subnet as leased: Subnet with the host bits
// cleared (172.16.28.1/24 gives 172.16.28.0/24), or in an IPv6-only
// network Subnet6's.
func (e SubnetEnv) Lease() netip.Prefix {
	if !e.Subnet.IsValid() {
		return e.Subnet6.Masked()
	}
	return e.Subnet.Masked()
}

// Lease6 is a dual-stack node's IPv6 subnet as leased; zero otherwise.
func (e SubnetEnv) Lease6() netip.Prefix {
	if !e.Subnet.IsValid() {
		return netip.Prefix{}
	}
	return e.Subnet6.Masked()
}

func (e SubnetEnv) validate() error {
	if !e.Network6.IsValid() || e.Network.IsValid() {
		if !e.Network.IsValid() {
			return fmt.Errorf("%s is not set", envNetwork)
		}
		if !e.Subnet.IsValid() {
			return fmt.Errorf("%s is not set", envSubnet)
		}
	}
	if e.Network6.IsValid() != e.Subnet6.IsValid() {
		return fmt.Errorf("%s and %s go together", envNetwork6, envSubnet6)
	}
	if e.MTU < minMTU || e.MTU > maxMTU {
		return fmt.Errorf("%s %d is outside %d..%d", envMTU, e.MTU, minMTU, maxMTU)
	}
	return nil
}

const (
	minMTU = 68 // the IPv4 minimum
	maxMTU = 65535
)

// encode renders e in the exact form flannel writes.
func (e SubnetEnv) encode() []byte {
	var b bytes.Buffer
	if e.Network.IsValid() {
		fmt.Fprintf(&b, "%s=%s\n", envNetwork, e.Network)
		fmt.Fprintf(&b, "%s=%s\n", envSubnet, e.Subnet)
	}
	if e.Network6.IsValid() {
		fmt.Fprintf(&b, "%s=%s\n", envNetwork6, e.Network6)
		fmt.Fprintf(&b, "%s=%s\n", envSubnet6, e.Subnet6)
	}
	fmt.Fprintf(&b, "%s=%d\n", envMTU, e.MTU)
	fmt.Fprintf(&b, "%s=%t\n", envIPMasq, e.IPMasq)
	if e.EtcdLease != 0 {
		fmt.Fprintf(&b, "%s=%x\n", envLease, e.EtcdLease)
	}
	return b.Bytes()
}

// WriteSubnetEnv writes env to path atomically: readers see the old file or
// the new one, never a torn one, also across a crash (temporary file in the
// same directory, fsync, rename, fsync of the directory). Missing directories
// are created.
func WriteSubnetEnv(path string, env SubnetEnv) error {
	if err := env.validate(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(env.encode()); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	done = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// ReadSubnetEnv reads and parses the subnet.env at path. A missing file gives
// an error for which errors.Is(err, fs.ErrNotExist) holds.
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("reading subnet file: %w", err)
	}
	env, err := ParseSubnetEnv(b)
	if le, ok := errors.AsType[*lineError](err); ok {
		return SubnetEnv{}, fmt.Errorf("%s line %d: %w", path, le.line, le.err)
	}
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("%s: %w", path, err)
	}
	return env, nil
}

// lineError is a parse error located on one line of the input.
type lineError struct {
	line int
	err  error
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }
func (e *lineError) Unwrap() error { return e.err }

// ParseSubnetEnv parses subnet.env content. It accepts blank lines, #
// comments and keys it does not know, and requires the keys weft writes,
// each once: FLANNEL_NETWORK and FLANNEL_SUBNET, or FLANNEL_IPV6_NETWORK and
// FLANNEL_IPV6_SUBNET, or both pairs; FLANNEL_MTU and FLANNEL_IPMASQ. Values are taken literally:
// no quotes, no shell expansion.
func ParseSubnetEnv(b []byte) (SubnetEnv, error) {
	var env SubnetEnv
	seen := map[string]int{} // key -> line
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return SubnetEnv{}, &lineError{n, fmt.Errorf("%q: not KEY=VALUE", line)}
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch key {
		case envNetwork, envSubnet, envNetwork6, envSubnet6, envMTU, envIPMasq, envLease:
		default:
			continue
		}
		if prev, dup := seen[key]; dup {
			return SubnetEnv{}, &lineError{n, fmt.Errorf("%s set again (first on line %d)", key, prev)}
		}
		seen[key] = n
		if err := env.set(key, val); err != nil {
			return SubnetEnv{}, &lineError{n, fmt.Errorf("%s %q: %w", key, val, err)}
		}
	}
	if err := sc.Err(); err != nil {
		return SubnetEnv{}, fmt.Errorf("parsing subnet file: %w", err)
	}
	var missing []string
	required := []string{envNetwork, envSubnet, envMTU, envIPMasq}
	if _, v6 := seen[envNetwork6]; v6 {
		if _, v4 := seen[envNetwork]; !v4 {
			required = []string{envMTU, envIPMasq} // IPv6-only
		}
		required = append(required, envSubnet6)
	}
	if _, v6 := seen[envSubnet6]; v6 {
		required = append(required, envNetwork6)
	}
	for _, k := range required {
		if _, ok := seen[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return SubnetEnv{}, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return env, nil
}

// set parses one known key's value into e.
func (e *SubnetEnv) set(key, val string) error {
	switch key {
	case envNetwork, envSubnet, envNetwork6, envSubnet6:
		p, err := netip.ParsePrefix(val)
		if err != nil {
			return errors.New("not an address/length")
		}
		v6 := key == envNetwork6 || key == envSubnet6
		if v6 && (!p.Addr().Is6() || p.Addr().Is4In6()) {
			return errors.New("not an IPv6 address/length")
		}
		switch key {
		case envNetwork:
			e.Network = p
		case envSubnet:
			e.Subnet = p
		case envNetwork6:
			e.Network6 = p
		default:
			e.Subnet6 = p
		}
	case envMTU:
		mtu, err := strconv.Atoi(val)
		if err != nil {
			return errors.New("not a number")
		}
		if mtu < minMTU || mtu > maxMTU {
			return fmt.Errorf("outside %d..%d", minMTU, maxMTU)
		}
		e.MTU = mtu
	case envIPMasq:
		v, err := strconv.ParseBool(val)
		if err != nil {
			return errors.New("not true or false")
		}
		e.IPMasq = v
	case envLease:
		id, err := strconv.ParseUint(val, 16, 63)
		if err != nil {
			return errors.New("not a hexadecimal etcd lease ID")
		}
		e.EtcdLease = int64(id)
	}
	return nil
}
