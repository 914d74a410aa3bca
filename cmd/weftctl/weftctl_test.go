package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDockerOpts(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "subnet.env")
	if err := os.WriteFile(env, []byte("FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"docker-opts", "-f", env}, nil, &out, &errb); err != nil {
		t.Fatal(err, errb.String())
	}
	// weft masquerades, so Docker must not.
	if want := `DOCKER_OPTS="--bip=172.16.28.1/24 --ip-masq=false --mtu=1450"` + "\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	dest := filepath.Join(dir, "docker_opts.env")
	if err := run(context.Background(), []string{"docker-opts", "-f", env, "-k", "OPTS", "-d", dest}, nil, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dest); !strings.HasPrefix(string(b), `OPTS="--bip=172.16.28.1/24`) {
		t.Errorf("-k/-d wrote %q", b)
	}
}

func TestConfigValidateNamesTheField(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"Network":"172.16.0.0/12","SubnetLen":33}`, "SubnetLen"},
		{`{"Network":"not a network"}`, "Network"},
		{`{"Network":"172.16.0.0/12","Backend":{"Type":"udp"}}`, "Backend.Type"},
		{`{"Network":"172.16.0.0/12","Backend":{"VNI":99999999}}`, "VNI"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), []string{"config", "validate", c.in}, nil, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("validate %s: got %v, want an error naming %s", c.in, err, c.want)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"config", "validate", "-f", "-"}, strings.NewReader(`{"network":"172.16.0.0/12"}`), &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"SubnetLen":24`) || !strings.Contains(out.String(), `"VNI":1`) {
		t.Errorf("validate did not print the config with flannel's defaults: %s", out.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, nil, &out, &errb); err != errUsage {
		t.Errorf("got %v, want a usage error", err)
	}
}
