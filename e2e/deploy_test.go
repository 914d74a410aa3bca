package e2e

// What deploy/ gives weftd: the systemd unit's sandbox and the DaemonSet's
// security context, read as systemd and Kubernetes would read them.

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// unitDirectives parses a systemd unit into section -> key -> values, one
// value per line that sets the key.
func unitDirectives(t *testing.T, b []byte) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q: want Key=value inside a section", line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// weftdDefault is the default of one of weftd's flags, from weftd --help.
func weftdDefault(t *testing.T, flag string) string {
	t.Helper()
	help, _ := exec.Command(filepath.Join(weftBin(t), "weftd"), "--help").CombinedOutput()
	m := regexp.MustCompile(`--` + flag + ` \S+\s.*\(default "([^"]*)"\)`).FindSubmatch(help)
	if m == nil {
		t.Fatalf("weftd --help shows no default for --%s:\n%s", flag, help)
	}
	return string(m[1])
}

// TestSystemdUnitSandbox: the unit confines weftd to what it does (links,
// routes, rules, subnet.env) and systemd accepts every line of it.
func TestSystemdUnitSandbox(t *testing.T) {
	const path = "../deploy/systemd/weftd.service"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svc := unitDirectives(t, raw)["Service"]
	for k, want := range map[string]string{
		"ProtectSystem":         "strict",
		"ProtectKernelModules":  "yes",
		"ProtectKernelLogs":     "yes",
		"ProtectClock":          "yes",
		"RestrictSUIDSGID":      "yes",
		"RestrictNamespaces":    "yes",
		"NoNewPrivileges":       "yes",
		"CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_RAW",
	} {
		if got := svc[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("%s: %s=%q, want %s=%s", path, k, got, k, want)
		}
	}
	if got := svc["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
		t.Errorf("%s: SystemCallFilter=%q, want @system-service first", path, got)
	}
	if len(svc["MemoryMax"]) != 1 {
		t.Errorf("%s: MemoryMax=%q, want one limit", path, svc["MemoryMax"])
	}
	// ProtectSystem=strict makes / read-only: the directory of weftd's
	// default --subnet-file must be writable.
	rw := strings.Fields(strings.Join(svc["ReadWritePaths"], " "))
	if dir := filepath.Dir(weftdDefault(t, "subnet-file")); !slices.Contains(rw, dir) {
		t.Errorf("%s: ReadWritePaths=%q lacks %s, where weftd writes subnet.env", path, rw, dir)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze not installed: checked the directives only")
		return
	}
	// verify wants ExecStart's binary to exist: point it at the one built.
	unit := filepath.Join(t.TempDir(), "weftd.service")
	fixed := bytes.ReplaceAll(raw, []byte("/usr/local/bin/weftd"), []byte(filepath.Join(weftBin(t), "weftd")))
	if err := os.WriteFile(unit, fixed, 0o644); err != nil {
		t.Fatal(err)
	}
	// verify exits 0 on unknown keys and bad values; it only says so.
	if out, err := exec.Command(analyze, "verify", unit).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", path, err, out)
	}
	// systemd's own score of the sandbox: 0 is shut tight, 10 is none. The
	// unit without a sandbox scored 6.1; a root daemon with host networking
	// cannot go far below 2.5.
	if out, err := exec.Command(analyze, "security", "--offline=yes", "--threshold=30", unit).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security rates the unit's exposure above 3.0: %v\n%s", err, out)
	}
}

// k8sObject is the part of a Kubernetes object the DaemonSet test reads.
type k8sObject struct {
	Kind string            `json:"kind"`
	Data map[string]string `json:"data"`
	Spec struct {
		Template struct {
			Spec podSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type container struct {
	Name string `json:"name"`
	Env  []struct {
		Name string `json:"name"`
	} `json:"env"`
	SecurityContext securityContext `json:"securityContext"`
	VolumeMounts    []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type securityContext struct {
	Privileged               *bool `json:"privileged"`
	AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
	SeccompProfile           *struct {
		Type string `json:"type"`
	} `json:"seccompProfile"`
	Capabilities struct {
		Add  []string `json:"add"`
		Drop []string `json:"drop"`
	} `json:"capabilities"`
}

type podSpec struct {
	HostNetwork     bool            `json:"hostNetwork"`
	HostPID         bool            `json:"hostPID"`
	SecurityContext securityContext `json:"securityContext"`
	InitContainers  []container     `json:"initContainers"`
	Containers      []container     `json:"containers"`
	Volumes         []struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
		} `json:"hostPath"`
		Secret *struct {
			SecretName string `json:"secretName"`
		} `json:"secret"`
	} `json:"volumes"`
}

// TestDaemonSetSecurity: weftd's pod runs with the two capabilities it needs
// and no way to gain more, under the runtime's seccomp profile, with only
// the host paths it writes, and reads its etcd password from a Secret file.
func TestDaemonSetSecurity(t *testing.T) {
	const path = "../deploy/kubernetes/weft-daemonset.yaml"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ds, cm *k8sObject
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(raw), -1) {
		var o k8sObject
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch o.Kind {
		case "DaemonSet":
			ds = &o
		case "ConfigMap":
			cm = &o
		}
	}
	if ds == nil || cm == nil {
		t.Fatalf("%s: want a DaemonSet and a ConfigMap", path)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.HostPID {
		t.Errorf("hostNetwork %v, hostPID %v: want the host's network (flannel.1, routes, rules) and nothing else of the host's",
			pod.HostNetwork, pod.HostPID)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want weftd alone", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("container privileged: %v, want false", sc.Privileged)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation: %v, want false", sc.AllowPrivilegeEscalation)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem: %v, want true", sc.ReadOnlyRootFilesystem)
	}
	if add := slices.Sorted(slices.Values(sc.Capabilities.Add)); !slices.Equal(add, []string{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("capabilities add %q drop %q, want NET_ADMIN and NET_RAW on top of nothing", sc.Capabilities.Add, sc.Capabilities.Drop)
	}
	for what, s := range map[string]securityContext{"pod": pod.SecurityContext, "container": sc} {
		if s.SeccompProfile == nil || s.SeccompProfile.Type != "RuntimeDefault" {
			t.Errorf("%s seccompProfile: %+v, want RuntimeDefault", what, s.SeccompProfile)
		}
	}

	hostPathOf := map[string]string{} // volume -> host path
	secrets := map[string]string{}    // volume -> secret
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPathOf[v.Name] = v.HostPath.Path
		}
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	hostPaths := func(c container) []string {
		var out []string
		for _, m := range c.VolumeMounts {
			if p, ok := hostPathOf[m.Name]; ok {
				out = append(out, p)
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := hostPaths(c), []string{"/run/flannel", "/run/xtables.lock"}; !slices.Equal(got, want) {
		t.Errorf("weftd's host paths %q, want only %q (subnet.env, the iptables lock)", got, want)
	}
	// The init container that installs weft-cni writes the CNI directories
	// and nothing else, with no capability at all.
	for _, ic := range pod.InitContainers {
		if got, want := hostPaths(ic), []string{"/etc/cni/net.d", "/opt/cni/bin"}; !slices.Equal(got, want) {
			t.Errorf("init container %s: host paths %q, want only %q", ic.Name, got, want)
		}
		isc := ic.SecurityContext
		if isc.AllowPrivilegeEscalation == nil || *isc.AllowPrivilegeEscalation || len(isc.Capabilities.Add) > 0 ||
			!slices.Equal(isc.Capabilities.Drop, []string{"ALL"}) {
			t.Errorf("init container %s: %+v, want no privilege escalation and no capability", ic.Name, isc)
		}
	}
	if len(hostPathOf) != 4 {
		t.Errorf("host path volumes %q: want the four above", hostPathOf)
	}

	for _, e := range c.Env {
		if e.Name == "WEFTD_ETCD_PASSWORD" {
			t.Errorf("the etcd password is passed in the environment, want a file")
		}
	}
	pwFile := cm.Data["WEFTD_ETCD_PASSWORD_FILE"]
	fromSecret := ""
	for _, m := range c.VolumeMounts {
		if s, ok := secrets[m.Name]; ok && pwFile != "" && strings.HasPrefix(pwFile, strings.TrimSuffix(m.MountPath, "/")+"/") {
			fromSecret = s
		}
	}
	if fromSecret == "" {
		t.Errorf("WEFTD_ETCD_PASSWORD_FILE=%q is not in a mounted Secret", pwFile)
	}
	// The user the DaemonSet logs in as is the node user setup-roles.sh makes.
	script, err := os.ReadFile("../deploy/etcd/setup-roles.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^node_user=(\S+)`).FindSubmatch(script)
	if m == nil || cm.Data["WEFTD_ETCD_USERNAME"] != string(m[1]) {
		t.Errorf("WEFTD_ETCD_USERNAME=%q, want setup-roles.sh's node user %q", cm.Data["WEFTD_ETCD_USERNAME"], m)
	}
}
