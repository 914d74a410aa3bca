package service

import (
	"encoding/json"
	"net/netip"
	"slices"
)

// The v1 shapes written to etcd and printed by weftctl. Only the fields weft
// supports are written; a stored object reads back to the same value.
type wireMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

type wirePort struct {
	Name       string   `json:"name,omitempty"`
	Protocol   Protocol `json:"protocol"`
	Port       uint16   `json:"port"`
	TargetPort uint16   `json:"targetPort,omitempty"`
}

type wireAffinity struct {
	ClientIP struct {
		TimeoutSeconds int `json:"timeoutSeconds"`
	} `json:"clientIP"`
}

type wireService struct {
	Kind       string   `json:"kind"`
	APIVersion string   `json:"apiVersion"`
	Metadata   wireMeta `json:"metadata"`
	Spec       struct {
		ClusterIP             string        `json:"clusterIP,omitempty"`
		Ports                 []wirePort    `json:"ports"`
		SessionAffinity       string        `json:"sessionAffinity"`
		SessionAffinityConfig *wireAffinity `json:"sessionAffinityConfig,omitempty"`
	} `json:"spec"`
}

type wireEndpoints struct {
	Kind       string       `json:"kind"`
	APIVersion string       `json:"apiVersion"`
	Metadata   wireMeta     `json:"metadata"`
	Subsets    []wireSubset `json:"subsets"`
}

type wireSubset struct {
	Addresses []wireAddr `json:"addresses"`
	Ports     []wirePort `json:"ports"`
}

type wireAddr struct {
	IP string `json:"ip"`
}

// MarshalJSON writes the Service as a v1 Service.
func (s Service) MarshalJSON() ([]byte, error) {
	var w wireService
	w.Kind, w.APIVersion = "Service", "v1"
	w.Metadata = wireMeta{Name: s.Name, Namespace: s.Namespace}
	if s.ClusterIP.IsValid() {
		w.Spec.ClusterIP = s.ClusterIP.String()
	}
	w.Spec.Ports = make([]wirePort, len(s.Ports))
	for i, p := range s.Ports {
		w.Spec.Ports[i] = wirePort(p)
	}
	w.Spec.SessionAffinity = "None"
	if s.AffinityTimeout > 0 {
		w.Spec.SessionAffinity = "ClientIP"
		w.Spec.SessionAffinityConfig = &wireAffinity{}
		w.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds = s.AffinityTimeout
	}
	return json.Marshal(w)
}

// MarshalJSON writes the Endpoints as a v1 Endpoints.
func (e Endpoints) MarshalJSON() ([]byte, error) {
	w := wireEndpoints{Kind: "Endpoints", APIVersion: "v1", Metadata: wireMeta{Name: e.Name, Namespace: e.Namespace}}
	w.Subsets = make([]wireSubset, len(e.Subsets))
	for i, s := range e.Subsets {
		ws := wireSubset{Addresses: make([]wireAddr, len(s.Addresses)), Ports: make([]wirePort, len(s.Ports))}
		for j, a := range s.Addresses {
			ws.Addresses[j] = wireAddr{IP: a.String()}
		}
		for j, p := range s.Ports {
			ws.Ports[j] = wirePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
		}
		w.Subsets[i] = ws
	}
	return json.Marshal(w)
}

// Backend is one endpoint of a service port: where its connections go.
type Backend = netip.AddrPort

// Backends returns the endpoints of the service port p: every address of
// every subset whose ports include one matching p, by name and protocol. A
// subset port with no name matches a service port with no name, or the only
// port of a one-port service. Duplicates are dropped; the order is sorted.
func Backends(s *Service, p Port, e *Endpoints) []Backend {
	if e == nil {
		return nil
	}
	var out []Backend
	for _, sub := range e.Subsets {
		for _, ep := range sub.Ports {
			if ep.Protocol != p.Protocol {
				continue
			}
			if ep.Name != p.Name && !(ep.Name == "" && len(s.Ports) == 1) {
				continue
			}
			for _, a := range sub.Addresses {
				out = append(out, netip.AddrPortFrom(a, ep.Port))
			}
		}
	}
	return sortUnique(out)
}

func sortUnique(b []Backend) []Backend {
	slices.SortFunc(b, func(x, y Backend) int { return x.Compare(y) })
	return slices.Compact(b)
}
