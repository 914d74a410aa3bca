package e2e

import (
	"errors"
	"fmt"
	"github.com/weft-net/weft/service"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
)

// TestServices walks REFERENCE.md's service through everything an operator
// relies on, on one two-node cluster: the subtests run in order and build on
// each other (the service created first is used by the next ones).
func TestServices(t *testing.T) {
	needRoot(t)
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs()
		}
	})
	n1, n2 := e.nodes[0], e.nodes[1]
	ep10 := n2.addContainer("c3", 10)
	ep9 := n2.containers[1] // .9
	client := n1.containers[0]
	// Bridge ports in hairpin mode, as Docker (--userland-proxy=false) and
	// CNI's bridge (hairpinMode) set them: with br_netfilter loaded, a
	// container's connection DNATed back to itself leaves by the port it came in.
	for _, n := range e.nodes {
		for _, ct := range n.containers {
			if _, err := n.IP(e.ctx, "link", "set", "veth-"+ct.Name, "type", "bridge_slave", "hairpin", "on"); err != nil {
				t.Fatal(err)
			}
		}
	}
	b9, b10 := startBackend(t, ep9), startBackend(t, ep10)
	mine := startBackend(t, n1.containers[1]) // .9 on node1, for the dead-node case
	_ = b9
	_ = b10

	// The empty table every node programs at start: what deletion must return to.
	var empty [2]svcTable
	for i, n := range e.nodes {
		e.eventually("weft-svc programmed on "+n.Name, 10*time.Second, func() (bool, string) {
			empty[i] = n.svcTable()
			return empty[i].exists && len(empty[i].chains) > 0, empty[i].String()
		})
	}

	var vip string
	t.Run("reference service from its JSON file", func(t *testing.T) {
		f := e.writeFile("service.yml", service.ReferenceService)
		out := e.mustWeftctl(n1.Host, "service", "create", "-f", f)
		lines := strings.Fields(out)
		vip = lines[len(lines)-1]
		if !strings.HasPrefix(vip, "10.254.") {
			t.Fatalf("weftctl service create printed %q, want a ClusterIP in 10.254.0.0/16", out)
		}
		e.mustWeftctl(n2.Host, "endpoints", "set", "my-nginx-service", ep9.Addr.String()+":80", ep10.Addr.String()+":80")
		eps := e.mustWeftctl(n1.Host, "endpoints", "get", "my-nginx-service")
		if !strings.Contains(eps, ep9.Addr.String()+":80") || !strings.Contains(eps, ep10.Addr.String()+":80") {
			t.Fatalf("endpoints get:\n%s", eps)
		}
		got := e.mustWeftctl(n1.Host, "service", "get", "my-nginx-service", "-o", "json")
		if !strings.Contains(got, `"clusterIP": "`+vip+`"`) || !strings.Contains(got, `"targetPort": 80`) {
			t.Fatalf("service get -o json:\n%s", got)
		}
		t.Logf("my-nginx-service: %s:8080 -> %s:80, %s:80", vip, ep9.Addr, ep10.Addr)
	})
	addr := vip + ":8080"

	t.Run("reachable from containers and hosts on every node", func(t *testing.T) {
		for _, from := range []nsOf{ctNS{n1.containers[0]}, ctNS{n2.containers[0]}, hostNS{n1}, hostNS{n2}} {
			e.eventually("service from "+from.nsName(), 10*time.Second, func() (bool, string) {
				out, err := ask(from.nsName(), addr)
				return err == nil, fmt.Sprint(out, err)
			})
		}
	})

	t.Run("spread over the endpoints", func(t *testing.T) {
		counts := map[string]int{}
		for range 200 {
			out, err := ask(client.NS, addr)
			if err != nil {
				t.Fatal(err)
			}
			counts[who(out)]++
		}
		t.Logf("200 connections from %s: %v", client.Addr, counts)
		if counts[ep9.Addr.String()] < 60 || counts[ep10.Addr.String()] < 60 {
			t.Fatalf("uneven spread: %v", counts)
		}
	})

	t.Run("the backend sees the client container's address", func(t *testing.T) {
		out, err := ask(client.NS, addr)
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(out); len(f) != 2 || !strings.HasPrefix(f[1], client.Addr.String()+":") {
			t.Fatalf("backend saw %q, want the client %s", out, client.Addr)
		}
	})

	t.Run("hairpin: an endpoint reaches its own service", func(t *testing.T) {
		self := 0
		for range 30 {
			out, err := ask(ep9.NS, addr)
			if err != nil {
				t.Fatalf("from the endpoint itself: %v", err)
			}
			if who(out) == ep9.Addr.String() {
				self++
			}
		}
		if self == 0 {
			t.Fatalf("30 connections from %s never landed on itself", ep9.Addr)
		}
		t.Logf("%d of 30 landed on the endpoint itself", self)
	})

	t.Run("ClientIP affinity", func(t *testing.T) {
		f := e.writeFile("sticky.json", `{"kind":"Service","apiVersion":"v1","metadata":{"name":"sticky"},
			"spec":{"ports":[{"port":8081,"targetPort":80}],"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":60}}}}`)
		out := strings.Fields(e.mustWeftctl(n1.Host, "service", "create", "-f", f))
		sticky := out[len(out)-1] + ":8081"
		e.mustWeftctl(n1.Host, "endpoints", "set", "sticky", ep9.Addr.String()+":80", ep10.Addr.String()+":80")
		for _, from := range []*cluster.Container{client, n1.containers[1], n2.containers[0]} {
			var first string
			e.eventually("sticky from "+from.Name, 10*time.Second, func() (bool, string) {
				out, err := ask(from.NS, sticky)
				first = who(out)
				return err == nil, fmt.Sprint(out, err)
			})
			for range 20 {
				out, err := ask(from.NS, sticky)
				if err != nil || who(out) != first {
					t.Fatalf("client %s: first to %s, then %q %v", from.Addr, first, out, err)
				}
			}
		}
	})

	t.Run("a removed endpoint gets no new connection 1s later", func(t *testing.T) {
		e.mustWeftctl(n1.Host, "endpoints", "set", "my-nginx-service", ep10.Addr.String()+":80")
		time.Sleep(time.Second)
		for range 50 {
			out, err := ask(client.NS, addr)
			if err != nil || who(out) != ep10.Addr.String() {
				t.Fatalf("1s after removing %s: %q %v", ep9.Addr, out, err)
			}
		}
	})

	t.Run("no endpoints: refused at once", func(t *testing.T) {
		e.mustWeftctl(n1.Host, "endpoints", "set", "my-nginx-service")
		time.Sleep(time.Second)
		for _, from := range []nsOf{ctNS{client}, hostNS{n1}, hostNS{n2}} {
			start := time.Now()
			_, err := ask(from.nsName(), addr)
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 500*time.Millisecond {
				t.Fatalf("from %s: %v after %v, want connection refused at once", from.nsName(), err, time.Since(start))
			}
		}
		e.mustWeftctl(n1.Host, "endpoints", "set", "my-nginx-service", ep9.Addr.String()+":80", ep10.Addr.String()+":80")
	})

	t.Run("UDP, and a removed endpoint's flow moves on", func(t *testing.T) {
		f := e.writeFile("dns.json", `{"kind":"Service","apiVersion":"v1","metadata":{"name":"dns"},"spec":{"ports":[{"protocol":"UDP","port":53}]}}`)
		out := strings.Fields(e.mustWeftctl(n1.Host, "service", "create", "-f", f))
		dns := out[len(out)-1] + ":53"
		e.mustWeftctl(n1.Host, "endpoints", "set", "dns", ep9.Addr.String()+":53", ep10.Addr.String()+":53")
		// One socket: every query is the same conntrack flow.
		var c net.Conn
		err := netnsx.DoNamed(client.NS, func() (err error) { c, err = net.Dial("udp4", dns); return err })
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		query := func() string {
			c.SetDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Write([]byte("q")); err != nil {
				return ""
			}
			buf := make([]byte, 200)
			n, err := c.Read(buf)
			if err != nil {
				return ""
			}
			return who(string(buf[:n]))
		}
		var first string
		e.eventually("a UDP answer", 10*time.Second, func() (bool, string) { first = query(); return first != "", "" })
		for range 5 {
			if got := query(); got != first {
				t.Fatalf("one flow answered by %s then %s", first, got)
			}
		}
		other := ep10.Addr.String()
		if first == other {
			other = ep9.Addr.String()
		}
		e.mustWeftctl(n1.Host, "endpoints", "set", "dns", other+":53")
		took := e.eventually("the same flow answered by the remaining endpoint", time.Second+500*time.Millisecond, func() (bool, string) {
			got := query()
			return got == other, got
		})
		t.Logf("flow moved from %s to %s %v after the endpoints change", first, other, took)
	})

	t.Run("a rules flush is repaired", func(t *testing.T) {
		for name, do := range map[string]func(*nftables.Conn, *nftables.Table){
			"flush table":  func(c *nftables.Conn, t *nftables.Table) { c.FlushTable(t) },
			"delete table": func(c *nftables.Conn, t *nftables.Table) { c.DelTable(t) },
		} {
			before := n1.logCount("rebuilding")
			n1.nftDo(do)
			took := e.eventually("service after "+name, 3*time.Second, func() (bool, string) {
				out, err := ask(client.NS, addr)
				return err == nil, fmt.Sprint(out, err)
			})
			e.eventually("the repair logged", 3*time.Second, func() (bool, string) { return n1.logCount("rebuilding") > before, "" })
			t.Logf("%s: repaired, service answered %v later", name, took)
		}
		// The host's route to the service network (weft's, on a host with
		// no default route) comes back with the periodic check.
		if _, err := n1.IP(e.ctx, "route", "del", "10.254.0.0/16"); err != nil {
			t.Fatal(err)
		}
		took := e.eventually("the host reaches the service again", 7*time.Second, func() (bool, string) {
			out, err := ask(n1.NS, addr)
			return err == nil, fmt.Sprint(out, err)
		})
		t.Logf("route deleted: repaired, the host's request answered %v later", took)
	})

	t.Run("restart without a lost connection", func(t *testing.T) {
		c, err := dialFrom(client.NS, "tcp4", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 200)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		errs := make(chan error, 2)
		go func() { // the open connection: one echo every 20 ms
			for i := 0; ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				case <-time.After(20 * time.Millisecond):
				}
				msg := fmt.Sprintf("ping %d\n", i)
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte(msg)); err != nil {
					errs <- fmt.Errorf("write %d: %w", i, err)
					return
				}
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != msg {
					errs <- fmt.Errorf("echo %d: %q %v", i, buf[:n], err)
					return
				}
			}
		}()
		go func() { // new connections every 50 ms
			for i := 0; ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				case <-time.After(50 * time.Millisecond):
				}
				if out, err := ask(client.NS, addr); err != nil {
					errs <- fmt.Errorf("new connection %d during the restart: %q %v", i, out, err)
					return
				}
			}
		}()
		n1.restart(syscall.SIGTERM, "")
		time.Sleep(2 * time.Second) // past the restarted weftd's first programming
		close(stop)
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("1,000 services applied from one List file", func(t *testing.T) {
		var items []string
		for i := range 1000 {
			items = append(items, fmt.Sprintf(`{"kind":"Service","apiVersion":"v1","metadata":{"name":"bulk%d","namespace":"bulk"},"spec":{"ports":[{"port":80}]}}`, i),
				fmt.Sprintf(`{"kind":"Endpoints","apiVersion":"v1","metadata":{"name":"bulk%d","namespace":"bulk"},"subsets":[{"addresses":[{"ip":"%s"},{"ip":"%s"}],"ports":[{"port":80}]}]}`, i, ep9.Addr, ep10.Addr))
		}
		f := e.writeFile("bulk.json", `{"kind":"List","apiVersion":"v1","items":[`+strings.Join(items, ",\n")+`]}`)
		start := time.Now()
		out := e.mustWeftctl(n1.Host, "apply", "-f", f)
		t.Logf("%s(%v)", out, time.Since(start))
		for _, n := range e.nodes {
			took := e.eventually("1,000 services on "+n.Name, 10*time.Second, func() (bool, string) {
				st := n.svcTable()
				return st.services >= 1003, st.String()
			})
			t.Logf("%s: all in the kernel %v after the apply returned", n.Name, took)
			e.eventually("weft_service_ports on "+n.Name, 5*time.Second, func() (bool, string) {
				v := n.metric(e.ctx, "weft_service_ports", "")
				return v >= 1003, fmt.Sprint(v)
			})
		}
		got := e.mustWeftctl(n1.Host, "service", "get", "bulk777", "-n", "bulk", "-o", "json")
		i := strings.Index(got, `"clusterIP": "`)
		bulkVIP := strings.Split(got[i+len(`"clusterIP": "`):], `"`)[0]
		if out, err := ask(client.NS, bulkVIP+":80"); err != nil {
			t.Fatalf("bulk777 at %s: %q %v", bulkVIP, out, err)
		}
	})

	t.Run("delete without debris", func(t *testing.T) {
		out := e.mustWeftctl(n1.Host, "service", "list", "-A")
		if !strings.Contains(out, "my-nginx-service") || !strings.Contains(out, "bulk999") {
			t.Fatalf("service list -A:\n%.400s", out)
		}
		for _, s := range []string{"my-nginx-service", "sticky", "dns"} {
			e.mustWeftctl(n2.Host, "service", "delete", s)
		}
		e.mustWeftctl(n2.Host, "apply", "-f", e.writeFile("none.json", `{"kind":"List","items":[]}`))
		for i := range 1000 {
			if _, err := e.cli.Delete(e.ctx, fmt.Sprintf("%s/services/specs/bulk/bulk%d", prefix, i)); err != nil {
				t.Fatal(err)
			}
		}
		for i, n := range e.nodes {
			e.eventually("the table back to empty on "+n.Name, 10*time.Second, func() (bool, string) {
				st := n.svcTable()
				slices.Sort(st.chains)
				slices.Sort(empty[i].chains)
				return slices.Equal(st.chains, empty[i].chains) && st.String() == empty[i].String(), st.String() + " want " + empty[i].String()
			})
		}
	})

	t.Run("--services=false leaves services alone", func(t *testing.T) {
		n3 := e.addNode("node3", mustPrefix("172.17.42.33/16"), "--services=false")
		n3.waitSubnetFile(30 * time.Second)
		e.mustWeftctl(n1.Host, "apply", "-f", e.writeFile("one.json", `{"kind":"Service","metadata":{"name":"late"},"spec":{"ports":[{"port":80}]}}`))
		time.Sleep(time.Second)
		if st := n3.svcTable(); st.exists || len(st.chains) > 0 {
			t.Fatalf("node3 (--services=false) has a weft-svc table: %s", st)
		}
		if routes, _ := n3.Routes(e.ctx); strings.Contains(routes, "10.254.0.0/16") {
			t.Fatalf("node3 (--services=false) routes the service network:\n%s", routes)
		}
	})

	t.Run("a dead node's endpoints are left out", func(t *testing.T) {
		f := e.writeFile("mixed.json", `{"kind":"Service","apiVersion":"v1","metadata":{"name":"mixed"},"spec":{"ports":[{"port":80}]}}`)
		out := strings.Fields(e.mustWeftctl(n1.Host, "service", "create", "-f", f))
		mixed := out[len(out)-1] + ":80"
		e.mustWeftctl(n1.Host, "endpoints", "set", "mixed", mine.ct.Addr.String()+":80", ep9.Addr.String()+":80")
		e.eventually("both endpoints answer", 10*time.Second, func() (bool, string) {
			seen := map[string]bool{}
			for range 20 {
				out, _ := ask(client.NS, mixed)
				seen[who(out)] = true
			}
			return seen[mine.ct.Addr.String()] && seen[ep9.Addr.String()], fmt.Sprint(seen)
		})
		// node2 dies: its weftd is killed and its lease expires (deleted here).
		n2.proc.Kill()
		<-n2.proc.Done()
		if _, err := e.cli.Delete(e.ctx, e.leaseKey(n2)); err != nil {
			t.Fatal(err)
		}
		e.eventually("only node1's endpoint gets connections", 10*time.Second, func() (bool, string) {
			for range 20 {
				out, err := ask(client.NS, mixed)
				if err != nil || who(out) != mine.ct.Addr.String() {
					return false, fmt.Sprint(out, err)
				}
			}
			return true, ""
		})
	})
}
