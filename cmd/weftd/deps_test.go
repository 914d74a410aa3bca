package main

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestNoTemplatePackages keeps text/template and html/template out of weftd
// as make build builds it. A template package calls reflect's Method by a
// name it only knows at run time, and once that is linked in, the linker
// must keep every exported method of every type that reaches an interface:
// weftd grows by about 4 MB, all of it mapped into every node's memory.
// gRPC brings them in through golang.org/x/net/trace unless built with the
// grpcnotrace tag.
//
// It also keeps k8s.io/api/core/v1 out: its generated types and codecs are
// about 3 MB of weftd, nearly all of it resident in etcd mode too, where
// no Kubernetes type is ever used (package kube decodes the few fields it
// reads into its own types).
func TestNoTemplatePackages(t *testing.T) {
	if testing.Short() {
		t.Skip("lists packages with the go tool")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TAGS[ \t]*:=[ \t]*(.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile sets no TAGS")
	}
	tags := strings.TrimSpace(string(m[1]))
	out, err := exec.Command("go", "list", "-deps", "-tags", tags, ".").Output()
	if err != nil {
		t.Fatalf("go list -deps -tags %s: %v", tags, err)
	}
	deps := strings.Fields(string(out))
	for _, bad := range []string{"text/template", "html/template", "golang.org/x/net/trace", "k8s.io/api/core/v1"} {
		if slices.Contains(deps, bad) {
			why, _ := exec.Command("go", "list", "-deps", "-tags", tags, "-f", `{{.ImportPath}}: {{join .Imports " "}}`, ".").Output()
			var importers []string
			for l := range strings.Lines(string(why)) {
				pkg, imps, _ := strings.Cut(strings.TrimSpace(l), ": ")
				if slices.Contains(strings.Fields(imps), bad) {
					importers = append(importers, pkg)
				}
			}
			t.Errorf("weftd built with -tags %s links %s (imported by %s): megabytes more binary, resident on every node", tags, bad, strings.Join(importers, ", "))
		}
	}
}
