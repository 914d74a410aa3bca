package main

import (
	"io"
	"testing"
)

func TestServicesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{nil, nil, true},
		{[]string{"--services=false"}, nil, false},
		{nil, map[string]string{"WEFTD_SERVICES": "false"}, false},
		{[]string{"--services"}, map[string]string{"WEFTD_SERVICES": "false"}, true},
	} {
		o, err := parseFlags(c.args, env(c.env), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if o.services != c.want {
			t.Errorf("%v %v: services %v, want %v", c.args, c.env, o.services, c.want)
		}
	}
}
