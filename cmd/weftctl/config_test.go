package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/subnet"
)

// config set writes the first config, refuses to replace a different one
// without --if-revision or --force, refuses a stale --if-revision, and
// leaves the key untouched whenever it refuses.
func TestConfigSetCompareAndSwap(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	ep := e.Endpoints()[0]
	weftctl := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, append(args, "--etcd-endpoints", ep), strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), err
	}
	stored := func() (string, int64) {
		t.Helper()
		resp, err := cli.Get(ctx, subnet.DefaultPrefix+"/config")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading the config: %v %v", resp, err)
		}
		return string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
	}

	if out, _, err := weftctl("config", "set", `{"Network":"172.16.0.0/12"}`); err != nil || !strings.HasPrefix(out, "set ") {
		t.Fatalf("first set: %q %v", out, err)
	}
	v1, rev1 := stored()

	// The same config again: nothing written.
	if out, _, err := weftctl("config", "set", `{"Network":"172.16.0.0/12","SubnetLen":24}`); err != nil || !strings.HasPrefix(out, "unchanged") {
		t.Fatalf("same config: %q %v", out, err)
	}
	// A different one, blind: refused, naming the revision to give.
	_, _, err := weftctl("config", "set", `{"Network":"10.0.0.0/8"}`)
	if err == nil || !strings.Contains(err.Error(), "--if-revision "+itoa(rev1)) {
		t.Fatalf("blind replace: %v, want a refusal naming --if-revision %d", err, rev1)
	}
	if v, rev := stored(); v != v1 || rev != rev1 {
		t.Fatalf("a refused set wrote: %s at %d", v, rev)
	}

	// get shows the revision; set --if-revision with it replaces, and says
	// a restart is needed for this change.
	_, stderr, err := weftctl("config", "get")
	if err != nil || !strings.Contains(stderr, "revision "+itoa(rev1)) {
		t.Fatalf("config get: %q %v", stderr, err)
	}
	// Someone else changes the config meanwhile (a live-safe change).
	if _, err := cli.Put(ctx, subnet.DefaultPrefix+"/config", `{"Network":"172.16.0.0/12","SubnetMax":"172.20.0.0"}`); err != nil {
		t.Fatal(err)
	}
	v2, rev2 := stored()
	_, _, err = weftctl("config", "set", "--if-revision", itoa(rev1), `{"Network":"10.0.0.0/8"}`)
	if err == nil || !strings.Contains(err.Error(), "changed since you read it") {
		t.Fatalf("stale --if-revision: %v, want a refusal", err)
	}
	if v, rev := stored(); v != v2 || rev != rev2 {
		t.Fatalf("a stale --if-revision overwrote the other writer's change: %s at %d", v, rev)
	}
	out, _, err := weftctl("config", "set", "--if-revision", itoa(rev2), `{"Network":"10.0.0.0/8"}`)
	if err != nil || !strings.Contains(out, "only after a restart (Network 172.16.0.0/12 -> 10.0.0.0/8") {
		t.Fatalf("set --if-revision %d: %q %v", rev2, out, err)
	}
	// --force replaces whatever is there, even garbage.
	if _, err := cli.Put(ctx, subnet.DefaultPrefix+"/config", "\x1b[2Jgarbage"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := weftctl("config", "set", `{"Network":"172.16.0.0/12"}`); err == nil || !strings.Contains(err.Error(), `"\x1b[2Jgarbage"`) {
		t.Fatalf("replacing garbage blind: %v, want a refusal showing it quoted", err)
	}
	if _, _, err := weftctl("config", "set", "--force", `{"Network":"172.16.0.0/12"}`); err != nil {
		t.Fatal(err)
	}
	if v, _ := stored(); !strings.Contains(v, `"Network":"172.16.0.0/12"`) {
		t.Fatalf("after --force: %s", v)
	}
	// A config weft refuses is never written, --force or not.
	if _, _, err := weftctl("config", "set", "--force", `{"Network":"127.0.0.0/8"}`); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("loopback Network: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"/coreos.com/network/subnets/172.16.1.0-24": "/coreos.com/network/subnets/172.16.1.0-24",
		"/x/\x1b]0;pwned\x07":                       `"/x/\x1b]0;pwned\a"`,
		"a\tb":                                      `"a\tb"`,
		"rtl\u202eevil":                             `"rtl\u202eevil"`,
		"\xff":                                      `"\xff"`,
		strings.Repeat("k", 200):                    strings.Repeat("k", 120) + "...",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
}
