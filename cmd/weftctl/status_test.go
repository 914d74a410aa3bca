package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// weftdStatus serves body as weftd's /status.
func weftdStatus(t *testing.T, code int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

const readyStatus = `{"status":{"subnet":"172.16.61.0/24","publicIP":"172.17.42.31","vtepMAC":"ca:91:60:99:8d:40",` +
	`"hasLease":true,"leaseExpiry":"2099-01-01T00:00:00Z","subnetFileWritten":true,"inSync":true,"peersDesired":2,"peersProgrammed":2,` +
	`"lastReconcile":"2026-11-26T11:01:13Z","lastEtcdSync":"2026-11-26T11:01:14Z","lastLoop":"2026-11-26T11:01:14Z"},"ready":true}`

func TestStatusText(t *testing.T) {
	addr := weftdStatus(t, http.StatusOK, readyStatus)
	var out, errOut bytes.Buffer
	if err := runStatus(context.Background(), []string{"--metrics-addr", addr}, &out, &errOut); err != nil {
		t.Fatalf("weftctl status: %v\n%s", err, errOut.String())
	}
	for _, want := range []string{
		"lease:              172.16.61.0/24\n",
		"public IP:          172.17.42.31\n",
		"VTEP MAC:           ca:91:60:99:8d:40\n",
		"lease expires:      2099-01-01T00:00:00Z (in ",
		"peers:              2 desired, 2 programmed\n",
		"subnet file:        written\n",
		"ready:              yes\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("weftctl status lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStatusJSON(t *testing.T) {
	addr := weftdStatus(t, http.StatusOK, readyStatus)
	var out bytes.Buffer
	if err := runStatus(context.Background(), []string{"--metrics-addr", addr, "-o", "json"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if out.String() != readyStatus {
		t.Errorf("weftctl status -o json changed weftd's answer:\n%s\nwant\n%s", out.String(), readyStatus)
	}
}

func TestStatusStarting(t *testing.T) {
	addr := weftdStatus(t, http.StatusServiceUnavailable, `{"notReady":["starting: waiting for etcd and the network config"],"ready":false}`)
	var out bytes.Buffer
	if err := runStatus(context.Background(), []string{"--metrics-addr", addr}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"lease:              none\n", "ready:              no\n", "- starting: waiting for etcd and the network config\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("weftctl status of a starting weftd lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPrintStatusNotReady(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	r := statusReply{Ready: false, NotReady: []string{"subnet file not written yet", "etcd never in sync"}}
	r.Status.LastReconcile = now.Add(-1500 * time.Millisecond)
	printStatus(&out, r, now)
	for _, want := range []string{
		"last reconcile:     1.5s ago\n",
		"etcd last in sync:  never\n",
		"subnet file:        not written\n",
		"ready:              no\n                    - subnet file not written yet\n                    - etcd never in sync\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStatusNoWeftd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	err = runStatus(context.Background(), []string{"--metrics-addr", addr}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "asking weftd at "+addr) {
		t.Errorf("weftctl status with no weftd: %v, want an error naming %s", err, addr)
	}
}
