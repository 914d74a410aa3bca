package subnet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
)

func TestLiveChange(t *testing.T) {
	cur := mustConfig(t, `{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.20.0"}`)
	for _, tc := range []struct {
		next string
		ok   bool
		why  string
	}{
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.20.0"}`, true, ""},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.30.0"}`, true, ""},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.1.0","SubnetMax":"172.31.255.0"}`, true, ""},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.11.0","SubnetMax":"172.16.20.0"}`, false, "SubnetMin raised 172.16.10.0 -> 172.16.11.0"},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.19.0"}`, false, "SubnetMax lowered 172.16.20.0 -> 172.16.19.0"},
		{`{"Network":"172.16.0.0/16","SubnetMin":"172.16.10.0","SubnetMax":"172.16.20.0"}`, false, "Network 172.16.0.0/12 -> 172.16.0.0/16"},
		{`{"Network":"172.16.0.0/12","SubnetLen":25,"SubnetMin":"172.16.10.0","SubnetMax":"172.16.20.0"}`, false, "SubnetLen 24 -> 25"},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.20.0","Backend":{"VNI":2}}`, false, "Backend"},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.10.0","SubnetMax":"172.16.30.0","Backend":{"MTU":1400}}`, false, "Backend"},
	} {
		ok, why := LiveChange(cur, mustConfig(t, tc.next))
		if ok != tc.ok || !strings.Contains(why, tc.why) || (tc.ok && why != "") {
			t.Errorf("%s: %v %q, want %v %q", tc.next, ok, why, tc.ok, tc.why)
		}
	}
}

// WatchConfig reports each change, a refused config with its reason, and a
// deletion; after etcd is restored from nothing it reports the config found
// there.
func TestWatchConfig(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := fastRegistry(t, cli)
	if _, err := cli.Put(ctx, r.configKey(), testNet); err != nil {
		t.Fatal(err)
	}
	_, rev, err := r.ReadConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan ConfigUpdate, 16)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.WatchConfig(wctx, rev, func(u ConfigUpdate) { got <- u }) }()
	t.Cleanup(func() { cancel(); <-done })
	next := func() ConfigUpdate {
		t.Helper()
		select {
		case u := <-got:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no config update within 5s")
		}
		return ConfigUpdate{}
	}
	put := func(v string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, r.configKey(), v)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}

	wide := `{"Network":"172.16.0.0/12","SubnetMax":"172.20.0.0"}`
	if rev := put(wide); true {
		u := next()
		if u.Err != nil || u.Revision != rev || u.Config != mustConfig(t, wide) {
			t.Fatalf("update %+v, want %s at %d", u, wide, rev)
		}
	}
	put(`{"Network":"127.0.0.0/8"}`)
	var ce *ConfigError
	if u := next(); !errors.As(u.Err, &ce) || !strings.Contains(u.Err.Error(), "loopback") {
		t.Fatalf("update %+v, want a refused config naming loopback", u)
	}
	if _, err := cli.Delete(ctx, r.configKey()); err != nil {
		t.Fatal(err)
	}
	if u := next(); !errors.Is(u.Err, ErrNoConfig) {
		t.Fatalf("update %+v, want ErrNoConfig", u)
	}

	// Restored from nothing with a config: revisions start again, the watch
	// sees nothing, the comeback read does.
	e.Restart(true)
	if _, err := cli.Put(ctx, r.configKey(), testNet); err != nil {
		t.Fatal(err)
	}
	r.signalComeback() // the peer watch's probe does this in weftd
	if u := next(); u.Err != nil || u.Config != mustConfig(t, testNet) {
		t.Fatalf("after the restore: %+v, want %s", u, testNet)
	}
}
