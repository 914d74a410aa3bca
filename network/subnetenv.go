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
	MTU    int
	IPMasq bool
	// EtcdLease is the etcd lease the node's key was attached to, 0 if
	// none; weft's own line, which flannel's readers ignore. After a
	// restart it proves which key was this node's (subnet.HoldRequest's
	// PreviousLease).
	EtcdLease int64
}

// The keys of subnet.env, in the order they are written.
const (
	envNetwork = "FLANNEL_NETWORK"
	envSubnet  = "FLANNEL_SUBNET"
	envMTU     = "FLANNEL_MTU"
	envIPMasq  = "FLANNEL_IPMASQ"
	envLease   = "WEFT_ETCD_LEASE" // optional, hexadecimal as etcdctl prints it
)

// Lease is the node's subnet as leased: Subnet with the host bits cleared
// (172.16.28.1/24 gives 172.16.28.0/24).
func (e SubnetEnv) Lease() netip.Prefix { return e.Subnet.Masked() }

func (e SubnetEnv) validate() error {
	if !e.Network.IsValid() {
		return fmt.Errorf("%s is not set", envNetwork)
	}
	if !e.Subnet.IsValid() {
		return fmt.Errorf("%s is not set", envSubnet)
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
	fmt.Fprintf(&b, "%s=%s\n", envNetwork, e.Network)
	fmt.Fprintf(&b, "%s=%s\n", envSubnet, e.Subnet)
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
// comments and keys it does not know (flannel adds FLANNEL_IPV6_* ones), and
// requires the four keys weft writes, each once. Values are taken literally:
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
		case envNetwork, envSubnet, envMTU, envIPMasq, envLease:
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
	for _, k := range []string{envNetwork, envSubnet, envMTU, envIPMasq} {
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
	case envNetwork, envSubnet:
		p, err := netip.ParsePrefix(val)
		if err != nil {
			return errors.New("not an address/length")
		}
		if key == envNetwork {
			e.Network = p
		} else {
			e.Subnet = p
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
