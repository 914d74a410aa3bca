package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// clkTck is the kernel's USER_HZ, the unit of /proc/<pid>/stat times; it is
// 100 on every Linux architecture Go supports.
const clkTck = 100

// procCPU is a process's CPU time: its own and that of its waited-for
// children (iptables, which weftd runs).
type procCPU struct{ self, children time.Duration }

func readCPU(pid int) (procCPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procCPU{}, err
	}
	// Fields after the command name, which may contain spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 15 {
		return procCPU{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	tick := func(i int) time.Duration {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		return time.Duration(v) * time.Second / clkTck
	}
	// utime, stime, cutime, cstime are fields 14-17 (1-based), 11-14 here.
	return procCPU{self: tick(11) + tick(12), children: tick(13) + tick(14)}, nil
}

func (c procCPU) sub(d procCPU) procCPU { return procCPU{c.self - d.self, c.children - d.children} }

// rss is a process's resident memory in bytes: its peak, and now, split
// into anonymous memory (heap, stacks) and file-backed pages (its binary).
type rss struct{ peak, cur, anon, file int64 }

func readRSS(pid int) (rss, error) {
	var r rss
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return r, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			r.peak = kb << 10
		case "VmRSS":
			r.cur = kb << 10
		case "RssAnon":
			r.anon = kb << 10
		case "RssFile":
			r.file = kb << 10
		}
	}
	return r, sc.Err()
}

// promSamples parses Prometheus text: "name{labels}" -> value.
func promSamples(text string) map[string]float64 {
	out := map[string]float64{}
	for l := range strings.Lines(text) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

var grpcStarted = regexp.MustCompile(`^grpc_server_started_total\{grpc_method="([^"]+)",grpc_service="[^"]+",grpc_type="[^"]+"\}$`)

// etcdRequests counts the gRPC requests etcd has started, by method.
func (n *node) etcdRequests(ctx context.Context) (map[string]int, error) {
	text, err := n.httpGet(ctx, etcdURL+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k, v := range promSamples(text) {
		if m := grpcStarted.FindStringSubmatch(k); m != nil && v > 0 {
			out[m[1]] = int(v)
		}
	}
	return out, nil
}

func diffCounts(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// weftMetrics reads weftd's own metrics.
func (n *node) weftMetrics(ctx context.Context) (map[string]float64, error) {
	text, err := n.httpGet(ctx, "http://"+metricsURL+"/metrics")
	if err != nil {
		return nil, err
	}
	return promSamples(text), nil
}

// logStats reads weftd's log: lines, bytes, the lines that name a
// synthetic peer (there should be none at the default level), and the
// "took" of the first "programmed peers" line.
type logStats struct {
	Lines        int `json:"lines"`
	Bytes        int `json:"bytes"`
	PerPeerLines int `json:"per_peer_lines"`
	Programmed   Dur `json:"programmed_took"`
	// ProgrammedTotal adds the "took" of the first "programmed peers"
	// line of each device (a dual-stack node has two).
	ProgrammedTotal Dur    `json:"programmed_took_all_devices"`
	Timeline        []span `json:"timeline"`
}

type span struct {
	Msg string `json:"msg"`
	At  Dur    `json:"at_ms"` // since the process started (the log has millisecond times)
}

// timeline is the start-up as "msg at, ...", up to "data plane ready".
func (s logStats) timeline() string {
	var parts []string
	for _, sp := range s.Timeline {
		parts = append(parts, fmt.Sprintf("%s %v", sp.Msg, sp.At))
		if sp.Msg == "data plane ready" {
			break
		}
	}
	return strings.Join(parts, "; ")
}

var tookRE = regexp.MustCompile(`took=([0-9.]+[a-zµ]+)`)

func readLog(path string, peers []synth, start time.Time) (logStats, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return logStats{}, err
	}
	names := make(map[string]bool, 2*len(peers))
	for _, p := range peers {
		names[p.subnet.String()] = true
		names[p.public.String()] = true
	}
	var st logStats
	devSeen := map[string]bool{}
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, "=== ") {
			continue // the cluster's header line
		}
		st.Lines++
		st.Bytes += len(l)
		for _, tok := range strings.FieldsFunc(l, func(r rune) bool { return r == ' ' || r == '=' || r == '"' || r == ',' }) {
			if names[tok] {
				st.PerPeerLines++
				break
			}
		}
		if ts, msg := logTimeMsg(l); !ts.IsZero() && len(st.Timeline) < 8 {
			st.Timeline = append(st.Timeline, span{Msg: msg, At: Dur(ts.Sub(start))})
		}
		if strings.Contains(l, `msg="programmed peers"`) && strings.Contains(l, "component=vxlan") {
			dev := ""
			if i := strings.Index(l, " device="); i >= 0 {
				dev, _, _ = strings.Cut(l[i+8:], " ")
			}
			if m := tookRE.FindStringSubmatch(l); m != nil && !devSeen[dev] {
				devSeen[dev] = true
				d, _ := time.ParseDuration(m[1])
				if st.Programmed == 0 {
					st.Programmed = Dur(d)
				}
				st.ProgrammedTotal += Dur(d)
			}
		}
	}
	return st, nil
}

var logLineRE = regexp.MustCompile(`^time=(\S+) level=\S+ msg="([^"]*)"`)

func logTimeMsg(l string) (time.Time, string) {
	m := logLineRE.FindStringSubmatch(l)
	if m == nil {
		return time.Time{}, ""
	}
	t, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		return time.Time{}, ""
	}
	return t, m[2]
}

// Machine describes where the bench ran.
type Machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	Kernel string `json:"kernel"`
	MemMiB int    `json:"mem_mib"`
	Go     string `json:"go"`
	Etcd   string `json:"etcd"`
	Date   string `json:"date"`
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().UTC().Format("2006-01-02")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemMiB = kb >> 10
	}
	if out, err := exec.Command("etcd", "--version").Output(); err == nil {
		m.Etcd, _, _ = strings.Cut(strings.TrimPrefix(string(out), "etcd Version: "), "\n")
	}
	return m
}
