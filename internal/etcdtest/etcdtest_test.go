package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestStartPauseRestart(t *testing.T) {
	e := Start(t, Options{})
	cli := e.Client(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}

	e.Pause()
	c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cli.Get(c, "/k")
	cancel()
	if err == nil {
		t.Fatalf("Get succeeded against a paused etcd")
	}
	e.Resume()
	if _, err := cli.Get(ctx, "/k"); err != nil {
		t.Fatalf("Get after resume: %v", err)
	}

	e.Restart(false)
	if r, err := cli.Get(ctx, "/k"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("data lost on restart without wipe: %v %v", r, err)
	}
	e.Restart(true)
	if r, err := cli.Get(ctx, "/k"); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("data kept on restart with wipe: %v %v", r, err)
	}
}
