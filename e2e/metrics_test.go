package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	alertRules = "../deploy/prometheus/weft-alerts.yml"
	alertTests = "../deploy/prometheus/weft-alerts.test.yml"
	dashboard  = "../deploy/grafana/weft-dashboard.json"
)

// TestMetrics scrapes a three-node cluster the way an operator does: curl,
// promtool, weftctl status, and a real Prometheus with weft's alert rules.
func TestMetrics(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3, weftdArgs: []string{"--metrics-addr", "0.0.0.0:8285"}})
	ctx := e.ctx
	for _, n := range e.nodes {
		n.waitReady(t, 2, 15*time.Second)
	}
	n := e.nodes[0]

	t.Run("healthz and readyz", func(t *testing.T) {
		for _, n := range e.nodes {
			if code, body := n.weftdGet(ctx, "/healthz"); code != http.StatusOK || body != "ok\n" {
				t.Errorf("%s /healthz: %d %q, want 200 \"ok\"", n.Name, code, body)
			}
			if code, body := n.weftdGet(ctx, "/readyz"); code != http.StatusOK || body != "ready\n" {
				t.Errorf("%s /readyz: %d %q, want 200 \"ready\"", n.Name, code, body)
			}
		}
	})

	t.Run("promtool check metrics", func(t *testing.T) {
		needPromtool(t)
		code, body := n.weftdGet(ctx, "/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		cmd := exec.CommandContext(ctx, "promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("alerts and dashboard use only exported metrics", func(t *testing.T) {
		_, body := n.weftdGet(ctx, "/metrics")
		exported := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(body, -1) {
			exported[m[1]] = true
		}
		for _, f := range []string{alertRules, dashboard} {
			for _, name := range metricNames(t, f) {
				if !exported[name] {
					t.Errorf("%s uses %s, which weftd does not export", f, name)
				}
			}
		}
	})

	t.Run("weftctl status", func(t *testing.T) {
		weftctl := filepath.Join(e.bin, "weftctl")
		out, err := n.Run(ctx, weftctl, "status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"lease:              " + n.subnet().String() + "\n",
			"public IP:          172.17.42.31\n",
			"VTEP MAC:           " + n.vtepMAC() + "\n",
			"peers:              2 desired, 2 programmed\n",
			"subnet file:        written\n",
			"ready:              yes\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("weftctl status lacks %q:\n%s", want, out)
			}
		}

		out, err = n.Run(ctx, weftctl, "status", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Status struct {
				Subnet          netip.Prefix
				PublicIP        netip.Addr
				PeersDesired    int
				PeersProgrammed int
			}
			Ready bool
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("weftctl status -o json: %v\n%s", err, out)
		}
		if st.Status.Subnet != n.subnet() || st.Status.PublicIP != n.Addr.Addr() || st.Status.PeersDesired != 2 || st.Status.PeersProgrammed != 2 || !st.Ready {
			t.Errorf("weftctl status -o json: %+v, want subnet %v, public IP %v, 2 peers, ready", st, n.subnet(), n.Addr.Addr())
		}
	})

	// Last: it stops etcd.
	t.Run("prometheus", func(t *testing.T) {
		var targets []string
		for _, n := range e.nodes {
			targets = append(targets, n.Addr.Addr().String()+":8285")
		}
		prom := startPrometheus(t, e.master, targets, alertRules)
		e.eventually("every weftd scraped", 15*time.Second, func() (bool, string) {
			var data struct {
				ActiveTargets []struct {
					ScrapeURL string
					Health    string
					LastError string
				}
			}
			if err := prom.api("/api/v1/targets", &data); err != nil {
				return false, err.Error()
			}
			up := 0
			for _, tg := range data.ActiveTargets {
				if tg.Health == "up" {
					up++
				}
			}
			return up == len(targets), fmt.Sprintf("%+v", data.ActiveTargets)
		})
		want := map[string]string{}
		for _, tg := range targets {
			want[tg] = "2"
		}
		e.eventually(`weft_peers{state="programmed"} is 2 everywhere`, 10*time.Second, func() (bool, string) {
			got, err := prom.query(`weft_peers{state="programmed"}`)
			return err == nil && fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got, err)
		})
		if got, err := prom.query(`weft_ready`); err != nil || len(got) != 3 || slices.ContainsFunc(slices.Collect(maps.Values(got)), func(v string) bool { return v != "1" }) {
			t.Errorf("weft_ready: %v %v, want 1 for each of %v", got, err, targets)
		}

		// The rules evaluate without error and stay quiet on a healthy cluster.
		type rule struct {
			Name, Health, LastError string
			LastEvaluation          time.Time
		}
		var rules []rule
		e.eventually("every alert rule evaluated", 10*time.Second, func() (bool, string) {
			var data struct{ Groups []struct{ Rules []rule } }
			if err := prom.api("/api/v1/rules?type=alert", &data); err != nil {
				return false, err.Error()
			}
			rules = nil
			for _, g := range data.Groups {
				rules = append(rules, g.Rules...)
			}
			return len(rules) > 0 && !slices.ContainsFunc(rules, func(r rule) bool { return r.LastEvaluation.IsZero() }), fmt.Sprintf("%+v", rules)
		})
		for _, r := range rules {
			if r.Health != "ok" {
				t.Errorf("alert %s: health %s: %s", r.Name, r.Health, r.LastError)
			}
		}
		if alerts := promAlerts(t, prom); len(alerts) > 0 {
			t.Errorf("alerts on a healthy cluster: %v", alerts)
		}

		// Without etcd, every node's WeftEtcdDown goes pending.
		e.etcd.Stop(5 * time.Second)
		e.eventually("WeftEtcdDown pending on every node", 15*time.Second, func() (bool, string) {
			alerts := promAlerts(t, prom)
			n := 0
			for _, a := range alerts {
				if a == "WeftEtcdDown pending" {
					n++
				}
			}
			return n == len(targets), fmt.Sprint(alerts)
		})
	})
}

// promAlerts lists Prometheus's pending and firing alerts as "NAME state".
func promAlerts(t *testing.T, prom *promServer) []string {
	t.Helper()
	var data struct {
		Alerts []struct {
			Labels map[string]string
			State  string
		}
	}
	if err := prom.api("/api/v1/alerts", &data); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range data.Alerts {
		out = append(out, a.Labels["alertname"]+" "+a.State)
	}
	return out
}

// metricNames lists the weft_ series file uses, by metric family: a
// histogram's _bucket, _sum and _count count as the histogram.
func metricNames(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`\bweft_[a-z_]+\b`).FindAllString(string(b), -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(m, "_seconds"+suffix) {
				m = strings.TrimSuffix(m, suffix)
			}
		}
		if !slices.Contains(names, m) {
			names = append(names, m)
		}
	}
	if len(names) == 0 {
		t.Fatalf("%s names no weft_ metric", file)
	}
	return names
}

// TestReadiness follows /healthz, /readyz and systemd's READY=1 through a
// start without a network config, the config's arrival, and an etcd outage
// longer than --ready-etcd-grace.
func TestReadiness(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 0})
	ctx := e.ctx
	if _, err := e.cli.Delete(ctx, prefix+"/config"); err != nil {
		t.Fatal(err)
	}
	var target atomic.Pointer[node]
	notify := listenNotify(t, func() int {
		n := target.Load()
		if n == nil {
			return 0
		}
		code, _ := n.weftdGet(context.Background(), "/readyz")
		return code
	})
	// For weftd alone: etcd speaks sd_notify too.
	n := e.addWeftd("node1", "172.17.42.31", []string{"NOTIFY_SOCKET=" + notify.Path},
		"--etcd-endpoints", etcdURL, "--ready-etcd-grace", "2s")
	target.Store(n)

	const starting = "starting: waiting for etcd and the network config\n"
	e.eventually("weftd answers /readyz", 10*time.Second, func() (bool, string) {
		code, body := n.weftdGet(ctx, "/readyz")
		return code != 0, body
	})
	time.Sleep(time.Second) // time for a READY=1 that should not come
	if code, body := n.weftdGet(ctx, "/readyz"); code != http.StatusServiceUnavailable || body != starting {
		t.Errorf("/readyz without a network config: %d %q, want 503 %q", code, body, starting)
	}
	if code, body := n.weftdGet(ctx, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while waiting for the config: %d %q, want 200", code, body)
	}
	if msgs := notify.received(); len(msgs) > 0 {
		t.Fatalf("weftd notified systemd %q before it had a network config", msgs[0].text)
	}

	if _, err := e.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		t.Fatal(err)
	}
	e.eventually("READY=1", 15*time.Second, func() (bool, string) {
		return len(notify.received()) > 0, n.proc.Tail(20)
	})
	if m := notify.received()[0]; m.text != "READY=1" || m.readyz != http.StatusOK {
		t.Errorf("first notification %q with /readyz at %d, want READY=1 with /readyz at 200", m.text, m.readyz)
	}

	e.etcd.Stop(5 * time.Second)
	var body string
	e.eventually("/readyz 503 once etcd was silent past the grace", 10*time.Second, func() (bool, string) {
		var code int
		code, body = n.weftdGet(ctx, "/readyz")
		return code == http.StatusServiceUnavailable, body
	})
	if !regexp.MustCompile(`^etcd last in sync \d+s ago \(grace 2s\)\n$`).MatchString(body) {
		t.Errorf("/readyz with etcd down: %q, want the one line saying when etcd was last in sync", body)
	}
	if code, body := n.weftdGet(ctx, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with etcd down: %d %q, want 200", code, body)
	}
	if _, body := n.weftdGet(ctx, "/metrics"); !strings.Contains(body, "\nweft_ready 0\n") {
		t.Errorf("/metrics with etcd down lacks weft_ready 0")
	}

	e.startEtcd()
	e.eventually("/readyz 200 with etcd back", 15*time.Second, func() (bool, string) {
		code, body := n.weftdGet(ctx, "/readyz")
		return code == http.StatusOK, body
	})
	if msgs := notify.received(); len(msgs) != 1 {
		t.Errorf("weftd notified systemd %d times, want once: %+v", len(msgs), msgs)
	}
}

func needPromtool(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; make deps installs it)")
	}
}

// TestDeployFiles checks deploy/ and the Dockerfile against weftd: the alert
// rules with promtool, the dashboard's queries, the flags and variables the
// unit and the DaemonSet set, and the image's build line. No root needed.
func TestDeployFiles(t *testing.T) {
	t.Run("alert rules", func(t *testing.T) {
		needPromtool(t)
		for _, args := range [][]string{{"check", "rules", alertRules}, {"test", "rules", alertTests}} {
			if out, err := exec.Command("promtool", args...).CombinedOutput(); err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		needPromtool(t)
		b, err := os.ReadFile(dashboard)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string
				Type    string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", dashboard, err)
		}
		// Every query must be valid PromQL: promtool checks them as recording
		// rules, with Grafana's variables filled in.
		vars := strings.NewReplacer("$__rate_interval", "5m", "$job", "weft", "$instance", ".*")
		var rules bytes.Buffer
		rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		var all string
		for i, p := range d.Panels {
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for j, tg := range p.Targets {
				fmt.Fprintf(&rules, "      - record: panel_%d_%d\n        expr: %q\n", i, j, vars.Replace(tg.Expr))
				all += tg.Expr + "\n"
			}
		}
		f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
		if err := os.WriteFile(f, rules.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("promtool", "check", "rules", f).CombinedOutput(); err != nil {
			t.Errorf("the dashboard's queries: %v\n%s", err, out)
		}
		for _, m := range []string{"weft_peers", "weft_program_latency_seconds", "weft_reconcile_duration_seconds",
			"weft_reconcile_repairs_total", "weft_etcd_up", "weft_etcd_request_duration_seconds", "weft_lease_expiry_timestamp_seconds"} {
			if !strings.Contains(all, m) {
				t.Errorf("no panel shows %s", m)
			}
		}
	})

	t.Run("weftd flags in the unit and the DaemonSet", func(t *testing.T) {
		help, _ := exec.Command(filepath.Join(weftBin(t), "weftd"), "--help").CombinedOutput()
		flags := map[string]bool{}
		for _, m := range regexp.MustCompile(`--([a-z][a-z-]+)`).FindAllStringSubmatch(string(help), -1) {
			flags[m[1]] = true
		}
		if !flags["etcd-endpoints"] {
			t.Fatalf("weftd --help lists no --etcd-endpoints:\n%s", help)
		}
		for _, f := range []string{"../deploy/systemd/weftd.service", "../deploy/systemd/weftd.env", "../deploy/kubernetes/weft-daemonset.yaml"} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range regexp.MustCompile(`\bWEFTD_([A-Z_]+)`).FindAllStringSubmatch(string(b), -1) {
				if name := strings.ToLower(strings.ReplaceAll(m[1], "_", "-")); !flags[name] {
					t.Errorf("%s sets %s, but weftd has no --%s", f, m[0], name)
				}
			}
			for _, m := range regexp.MustCompile(`(?m)^\s*- --([a-z-]+)`).FindAllStringSubmatch(string(b), -1) {
				if !flags[m[1]] {
					t.Errorf("%s passes --%s, which weftd does not have", f, m[1])
				}
			}
		}
	})

	t.Run("Dockerfile builds as make build", func(t *testing.T) {
		mk, err := os.ReadFile("../Makefile")
		if err != nil {
			t.Fatal(err)
		}
		df, err := os.ReadFile("../Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		ld := regexp.MustCompile(`(?m)^LDFLAGS\s*:=\s*(.+)$`).FindSubmatch(mk)
		if ld == nil {
			t.Fatal("Makefile sets no LDFLAGS")
		}
		ldflags := strings.ReplaceAll(strings.TrimSpace(string(ld[1])), "$(VERSION)", "${VERSION}")
		tags := regexp.MustCompile(`(?m)^TAGS[ \t]*:=[ \t]*(.*)$`).FindSubmatch(mk)
		if tags == nil {
			t.Fatal("Makefile sets no TAGS")
		}
		for _, c := range []string{"weftd", "weftctl"} {
			mkLine := fmt.Sprintf("CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/%s ./cmd/%s", c, c)
			if !strings.Contains(string(mk), mkLine) {
				t.Fatalf("Makefile no longer builds %s with %q: update the Dockerfile and this test", c, mkLine)
			}
			dfLine := fmt.Sprintf(`CGO_ENABLED=0 go build -tags %s -trimpath -ldflags "%s" -o /out/%s ./cmd/%s`, strings.TrimSpace(string(tags[1])), ldflags, c, c)
			if !strings.Contains(string(df), dfLine) {
				t.Errorf("Dockerfile does not build %s as make build does; want\n%s", c, dfLine)
			}
		}
	})
}
