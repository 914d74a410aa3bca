package network

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// procSys is where the kernel exposes sysctls. They are per network
// namespace for net.*: a process sees those of the namespace it runs in.
const procSys = "/proc/sys"

// EnableForwarding turns on IPv4 forwarding, without which the node would
// not pass packets between its containers' bridge and the overlay device.
func EnableForwarding() error {
	return setSysctl("net.ipv4.ip_forward", "1")
}

// EnableForwarding6 turns on IPv6 forwarding, which a node of a dual-stack
// or IPv6-only network needs to route between the overlay and its
// containers. (With forwarding on, the kernel stops taking router
// advertisements on interfaces whose accept_ra is 1, as for any router.)
func EnableForwarding6() error {
	return setSysctl("net.ipv6.conf.all.forwarding", "1")
}

// setSysctl sets the sysctl name (dotted, net.ipv4.ip_forward, or slashed,
// net/ipv4/conf/flannel.1/rp_filter for keys with a dot in a component) to
// value. It does not write when the value is already right.
func setSysctl(name, value string) error { return writeSysctl(procSys, name, value) }

// getSysctl reads the sysctl name, without the trailing newline.
func getSysctl(name string) (string, error) { return readSysctl(procSys, name) }

func sysctlPath(root, name string) string {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	return filepath.Join(root, filepath.Clean("/"+name))
}

func readSysctl(root, name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(root, name))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(root, name, value string) error {
	if cur, err := readSysctl(root, name); err == nil && cur == value {
		return nil
	}
	// Sysctls are written like this by sysctl(8): no create, no truncate
	// beyond what the kernel does, one write.
	f, err := os.OpenFile(sysctlPath(root, name), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("setting sysctl %s to %s: %w", name, value, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("setting sysctl %s to %s: %w", name, value, err)
	}
	return nil
}
