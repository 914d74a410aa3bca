package e2e

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/weft-net/weft/subnet"
)

// TestKubeManifest: deploy/kubernetes/weft-kube.yaml runs weftd in
// Kubernetes mode with the node's name and net-conf.json where weftd looks
// for them, as its ServiceAccount, with two capabilities and no privilege.
// (The Kubernetes-mode e2e tests create its objects in a real API server and
// run weftd with its ClusterRole.)
func TestKubeManifest(t *testing.T) {
	var (
		ds   *appsv1.DaemonSet
		cm   *corev1.ConfigMap
		bind *rbacv1.ClusterRoleBinding
	)
	for _, o := range readKubeManifest(t) {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ConfigMap:
			cm = o
		case *rbacv1.ClusterRoleBinding:
			bind = o
		}
	}
	if ds == nil || cm == nil || bind == nil {
		t.Fatalf("%s: want a DaemonSet, a ConfigMap and a ClusterRoleBinding", kubeManifest)
	}
	if _, err := subnet.ParseConfig([]byte(cm.Data["net-conf.json"])); err != nil {
		t.Errorf("net-conf.json of the ConfigMap: %v", err)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("weftd's pod is not on the host's network")
	}
	if len(bind.Subjects) != 1 || bind.Subjects[0].Name != pod.ServiceAccountName || bind.Subjects[0].Namespace != ds.Namespace {
		t.Errorf("the ClusterRole is bound to %+v, but the pod runs as %s/%s", bind.Subjects, ds.Namespace, pod.ServiceAccountName)
	}
	c := pod.Containers[0]
	if !slices.Contains(c.Args, "--kube-subnet-mgr") || !slices.Contains(c.Args, "--net-config-path=/etc/kube-flannel/net-conf.json") {
		t.Errorf("weftd's args %v: want --kube-subnet-mgr and --net-config-path", c.Args)
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("NODE_NAME is not the pod's spec.nodeName")
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if m.Name == v.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && m.MountPath == "/etc/kube-flannel" {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Error("the ConfigMap is not mounted at /etc/kube-flannel")
	}
	for _, ic := range pod.InitContainers {
		if sc := ic.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("init container %s may escalate privileges", ic.Name)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("weftd's securityContext %+v: want unprivileged, no escalation, ALL dropped, NET_ADMIN and NET_RAW added", sc)
	}
}
