package network

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGetSysctl(t *testing.T) {
	got, err := getSysctl("kernel.ostype")
	if err != nil {
		t.Fatal(err)
	}
	if got != "Linux" {
		t.Errorf("kernel.ostype = %q, want Linux", got)
	}
	v, err := getSysctl("net.ipv4.ip_forward")
	if err != nil || (v != "0" && v != "1") {
		t.Errorf("net.ipv4.ip_forward = %q, %v", v, err)
	}
}

func TestSysctlErrorNamesKey(t *testing.T) {
	_, err := getSysctl("net.ipv4.no_such_key")
	if err == nil || !strings.Contains(err.Error(), "net.ipv4.no_such_key") {
		t.Errorf("err = %v, want it to name the key", err)
	}
	err = setSysctl("net.ipv4.no_such_key", "1")
	if err == nil || !strings.Contains(err.Error(), "setting sysctl net.ipv4.no_such_key to 1") {
		t.Errorf("err = %v, want it to name the key", err)
	}
}

func TestSysctlPath(t *testing.T) {
	for name, want := range map[string]string{
		"net.ipv4.ip_forward":                "/proc/sys/net/ipv4/ip_forward",
		"net/ipv4/conf/flannel.1/rp_filter":  "/proc/sys/net/ipv4/conf/flannel.1/rp_filter",
		"../../etc/passwd":                   "/proc/sys/etc/passwd",
		"net.ipv6.conf.all.disable_ipv6":     "/proc/sys/net/ipv6/conf/all/disable_ipv6",
		"/net/ipv4/conf/default/forwarding/": "/proc/sys/net/ipv4/conf/default/forwarding",
	} {
		if got := sysctlPath(procSys, name); got != want {
			t.Errorf("sysctlPath(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestWriteSysctl runs the write path against a directory standing in for
// /proc/sys, so it needs no privileges and changes nothing on the host.
func TestWriteSysctl(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "net", "ipv4", "ip_forward")
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("0\n"), 0o644)
	if err := writeSysctl(root, "net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if got, err := readSysctl(root, "net.ipv4.ip_forward"); err != nil || got != "1" {
		t.Errorf("after write: %q, %v", got, err)
	}
	// Already right: no write, so even a read-only file is fine.
	os.Chmod(p, 0o444)
	if err := writeSysctl(root, "net.ipv4.ip_forward", "1"); err != nil {
		t.Errorf("rewriting an equal value: %v", err)
	}
	// A key that does not exist is not created.
	if err := writeSysctl(root, "net.ipv4.nope", "1"); err == nil {
		t.Error("writing a missing key succeeded")
	}
	if _, err := os.Stat(filepath.Join(root, "net", "ipv4", "nope")); err == nil {
		t.Error("writing a missing key created it")
	}
}
