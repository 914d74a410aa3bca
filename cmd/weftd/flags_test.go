package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagsDefaults(t *testing.T) {
	o, err := parseFlags(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.etcdEndpoints, ","); got != "http://127.0.0.1:2379" {
		t.Errorf("--etcd-endpoints default %q", got)
	}
	if o.etcdPrefix != "/coreos.com/network" || o.subnetFile != "/run/flannel/subnet.env" ||
		o.metricsAddr != "127.0.0.1:8285" || o.leaseTTL != 24*time.Hour || o.ipMasq {
		t.Errorf("defaults: %+v", o)
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	o, err := parseFlags([]string{"--iface", "eth1"}, env(map[string]string{
		"WEFTD_ETCD_ENDPOINTS": "https://10.0.0.1:2379, https://10.0.0.2:2379",
		"WEFTD_IP_MASQ":        "true",
		"WEFTD_IFACE":          "eth9", // the command line wins
		"WEFTD_LEASE_TTL":      "1h",
		"WEFTD_ETCD_PASSWORD":  "s3cret",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.etcdEndpoints, ","); got != "https://10.0.0.1:2379,https://10.0.0.2:2379" {
		t.Errorf("endpoints from WEFTD_ETCD_ENDPOINTS: %q", got)
	}
	if !o.ipMasq || o.leaseTTL != time.Hour || o.etcdPassword != "s3cret" {
		t.Errorf("from the environment: %+v", o)
	}
	if strings.Join(o.ifaces, ",") != "eth1" {
		t.Errorf("--iface: command line must win over WEFTD_IFACE, got %v", o.ifaces)
	}
}

func TestFlagsErrorsNameTheInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--lease-ttl", "1s"}, nil, "--lease-ttl 1s"},
		{[]string{"--etcd-certfile", "a.pem"}, nil, "--etcd-certfile and --etcd-keyfile"},
		{nil, map[string]string{"WEFTD_IP_MASQ": "maybe"}, `WEFTD_IP_MASQ="maybe"`},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
		{[]string{"--etcd-password-file", "/nonexistent/pw"}, nil, "--etcd-password-file"},
		{[]string{"--resync-interval", "1ms"}, nil, "--resync-interval"},
	} {
		_, err := parseFlags(c.args, env(c.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: got %v, want an error naming %q", c.args, c.env, err, c.want)
		}
	}
}

func FuzzParseFlags(f *testing.F) {
	f.Add("--iface=eth0", "WEFTD_LEASE_TTL", "5m")
	f.Add("--etcd-endpoints=http://a:1,http://b:2", "WEFTD_IP_MASQ", "1")
	f.Add("--public-ip=10.0.0.1", "WEFTD_IFACE_REGEX", "^e.*")
	f.Fuzz(func(t *testing.T, arg, key, val string) {
		// Whatever comes in, parsing returns a value or an error; it never panics.
		_, _ = parseFlags([]string{arg}, env(map[string]string{key: val}), io.Discard)
	})
}
