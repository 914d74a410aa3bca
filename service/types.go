package service

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DefaultNamespace is the namespace of objects that name none.
const DefaultNamespace = "default"

// DefaultAffinityTimeout is Kubernetes' default for
// sessionAffinityConfig.clientIP.timeoutSeconds: three hours.
const DefaultAffinityTimeout = 10800

// Protocol is a service port's transport protocol.
type Protocol string

// The protocols weft serves.
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// Service is a v1 Service as weft serves it: the fields it supports, checked.
type Service struct {
	Namespace string
	Name      string
	ClusterIP netip.Addr // zero until allocated
	Ports     []Port
	// AffinityTimeout is the ClientIP affinity timeout in seconds; 0 means
	// sessionAffinity None.
	AffinityTimeout int
}

// Port is one of spec.ports.
type Port struct {
	Name       string
	Protocol   Protocol
	Port       uint16
	TargetPort uint16
}

// Endpoints is a v1 Endpoints object.
type Endpoints struct {
	Namespace string
	Name      string
	Subsets   []Subset
}

// Subset is one of subsets: every address serves every port.
type Subset struct {
	Addresses []netip.Addr
	Ports     []EndpointPort
}

// EndpointPort is one of subsets[].ports.
type EndpointPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Ref names an object: "<namespace>/<name>".
func Ref(ns, name string) string { return ns + "/" + name }

// Ref is the service's "<namespace>/<name>".
func (s Service) Ref() string { return Ref(s.Namespace, s.Name) }

// Ref is the endpoints' "<namespace>/<name>".
func (e Endpoints) Ref() string { return Ref(e.Namespace, e.Name) }

// The wire forms. Every field that needs checking is raw, so that an error can
// name it; encoding/json ignores the fields weft does not know.
type rawObject struct {
	Kind       json.RawMessage `json:"kind"`
	APIVersion json.RawMessage `json:"apiVersion"`
	Metadata   *struct {
		Name      json.RawMessage `json:"name"`
		Namespace json.RawMessage `json:"namespace"`
	} `json:"metadata"`
	Spec *struct {
		ClusterIP             json.RawMessage `json:"clusterIP"`
		Ports                 []rawPort       `json:"ports"`
		SessionAffinity       json.RawMessage `json:"sessionAffinity"`
		SessionAffinityConfig *struct {
			ClientIP *struct {
				TimeoutSeconds json.RawMessage `json:"timeoutSeconds"`
			} `json:"clientIP"`
		} `json:"sessionAffinityConfig"`
	} `json:"spec"`
	Subsets []struct {
		Addresses []struct {
			IP json.RawMessage `json:"ip"`
		} `json:"addresses"`
		Ports []rawPort `json:"ports"`
	} `json:"subsets"`
	Items []json.RawMessage `json:"items"`
}

type rawPort struct {
	Name       json.RawMessage `json:"name"`
	Protocol   json.RawMessage `json:"protocol"`
	Port       json.RawMessage `json:"port"`
	TargetPort json.RawMessage `json:"targetPort"`
}

func present(m json.RawMessage) bool { return len(m) > 0 && !bytes.Equal(m, []byte("null")) }

// FieldError is an invalid field: its path in the object and what is wrong.
type FieldError struct {
	Object string // "Service default/web", or "" when unknown
	Field  string // "spec.ports[0].port"
	Value  string // the raw JSON value, shortened; may be empty
	Reason string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Object != "" {
		b.WriteString(e.Object + ": ")
	}
	b.WriteString(e.Field)
	if e.Value != "" {
		b.WriteString(" " + e.Value)
	}
	b.WriteString(": " + e.Reason)
	return b.String()
}

func fieldErr(field string, raw json.RawMessage, reason string) *FieldError {
	v := string(bytes.TrimSpace(raw))
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return &FieldError{Field: field, Value: v, Reason: reason}
}

func str(field string, raw json.RawMessage) (string, error) {
	if !present(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(field, raw, "must be a string")
	}
	return s, nil
}

func portNum(field string, raw json.RawMessage) (uint16, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil || n < 1 || n > 65535 {
		return 0, fieldErr(field, raw, "must be a port number between 1 and 65535")
	}
	return uint16(n), nil
}

// dns1123 is a Kubernetes namespace or port name; dns1035 a service name.
var (
	dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035 = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
)

func checkName(field string, raw json.RawMessage, s string, re *regexp.Regexp, what string) error {
	if len(s) > 63 || !re.MatchString(s) {
		return fieldErr(field, raw, "must be "+what+" of at most 63 characters")
	}
	return nil
}

// meta reads kind, apiVersion and metadata, with the namespace defaulting to
// ns (and to "default" when ns is empty).
func meta(raw *rawObject, wantKind, ns string) (string, string, error) {
	if present(raw.Kind) {
		k, err := str("kind", raw.Kind)
		if err != nil {
			return "", "", err
		}
		if k != wantKind {
			return "", "", fieldErr("kind", raw.Kind, "must be "+wantKind)
		}
	}
	if present(raw.APIVersion) {
		v, err := str("apiVersion", raw.APIVersion)
		if err != nil {
			return "", "", err
		}
		if v != "v1" {
			return "", "", fieldErr("apiVersion", raw.APIVersion, "must be v1")
		}
	}
	if raw.Metadata == nil || !present(raw.Metadata.Name) {
		return "", "", &FieldError{Field: "metadata.name", Reason: "is required"}
	}
	name, err := str("metadata.name", raw.Metadata.Name)
	if err != nil {
		return "", "", err
	}
	if err := checkName("metadata.name", raw.Metadata.Name, name, dns1035, "a DNS label (a-z, 0-9, '-', starting with a letter)"); err != nil {
		return "", "", err
	}
	if ns == "" {
		ns = DefaultNamespace
	}
	if present(raw.Metadata.Namespace) {
		if ns, err = str("metadata.namespace", raw.Metadata.Namespace); err != nil {
			return "", "", err
		}
		if err := checkName("metadata.namespace", raw.Metadata.Namespace, ns, dns1123, "a DNS label (a-z, 0-9, '-')"); err != nil {
			return "", "", err
		}
	}
	return ns, name, nil
}

func protocol(field string, raw json.RawMessage) (Protocol, error) {
	p, err := str(field, raw)
	if err != nil {
		return "", err
	}
	switch Protocol(p) {
	case "", TCP:
		return TCP, nil
	case UDP:
		return UDP, nil
	}
	return "", fieldErr(field, raw, "must be TCP or UDP")
}

// ParseService parses and checks a v1 Service. ns is the namespace for a
// Service that names none ("" means "default"). Unknown fields are ignored;
// an invalid one is a *FieldError naming it.
func ParseService(data []byte, ns string) (Service, error) {
	var raw rawObject
	if err := json.Unmarshal(data, &raw); err != nil {
		return Service{}, fmt.Errorf("not a JSON object: %w", err)
	}
	return serviceFrom(&raw, ns)
}

func serviceFrom(raw *rawObject, ns string) (Service, error) {
	var s Service
	var err error
	if s.Namespace, s.Name, err = meta(raw, "Service", ns); err != nil {
		return Service{}, err
	}
	if err := s.spec(raw); err != nil {
		var fe *FieldError
		if asField(err, &fe) {
			fe.Object = "Service " + s.Ref()
		}
		return Service{}, err
	}
	return s, nil
}

func asField(err error, fe **FieldError) bool {
	f, ok := err.(*FieldError)
	if ok {
		*fe = f
	}
	return ok
}

func (s *Service) spec(raw *rawObject) error {
	if raw.Spec == nil {
		return &FieldError{Field: "spec", Reason: "is required"}
	}
	sp := raw.Spec
	if present(sp.ClusterIP) {
		v, err := str("spec.clusterIP", sp.ClusterIP)
		if err != nil {
			return err
		}
		switch v {
		case "":
		case "None":
			return fieldErr("spec.clusterIP", sp.ClusterIP, "headless services are not supported")
		default:
			a, err := netip.ParseAddr(v)
			if err != nil || !a.Is4() {
				return fieldErr("spec.clusterIP", sp.ClusterIP, "must be an IPv4 address")
			}
			s.ClusterIP = a
		}
	}
	if len(sp.Ports) == 0 {
		return &FieldError{Field: "spec.ports", Reason: "at least one port is required"}
	}
	names := map[string]bool{}
	seen := map[string]bool{}
	for i, rp := range sp.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		var p Port
		var err error
		if p.Name, err = str(f+".name", rp.Name); err != nil {
			return err
		}
		if p.Name != "" {
			if err := checkName(f+".name", rp.Name, p.Name, dns1123, "a DNS label (a-z, 0-9, '-')"); err != nil {
				return err
			}
		} else if len(sp.Ports) > 1 {
			return &FieldError{Field: f + ".name", Reason: "is required when a service has more than one port"}
		}
		if names[p.Name] {
			return fieldErr(f+".name", rp.Name, "is used by another port")
		}
		names[p.Name] = true
		if p.Protocol, err = protocol(f+".protocol", rp.Protocol); err != nil {
			return err
		}
		if !present(rp.Port) {
			return &FieldError{Field: f + ".port", Reason: "is required"}
		}
		if p.Port, err = portNum(f+".port", rp.Port); err != nil {
			return err
		}
		p.TargetPort = p.Port
		if present(rp.TargetPort) {
			if bytes.HasPrefix(bytes.TrimSpace(rp.TargetPort), []byte(`"`)) {
				return fieldErr(f+".targetPort", rp.TargetPort, "named target ports are not supported: give a number")
			}
			if p.TargetPort, err = portNum(f+".targetPort", rp.TargetPort); err != nil {
				return err
			}
		}
		k := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen[k] {
			return fieldErr(f+".port", rp.Port, "is used by another port of the same protocol")
		}
		seen[k] = true
		s.Ports = append(s.Ports, p)
	}
	aff, err := str("spec.sessionAffinity", sp.SessionAffinity)
	if err != nil {
		return err
	}
	switch aff {
	case "", "None":
	case "ClientIP":
		s.AffinityTimeout = DefaultAffinityTimeout
		if c := sp.SessionAffinityConfig; c != nil && c.ClientIP != nil && present(c.ClientIP.TimeoutSeconds) {
			raw := c.ClientIP.TimeoutSeconds
			n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
			if err != nil || n < 1 || n > 86400 {
				return fieldErr("spec.sessionAffinityConfig.clientIP.timeoutSeconds", raw, "must be an integer between 1 and 86400")
			}
			s.AffinityTimeout = int(n)
		}
	default:
		return fieldErr("spec.sessionAffinity", sp.SessionAffinity, "must be None or ClientIP")
	}
	return nil
}

// ParseEndpoints parses and checks a v1 Endpoints object, as ParseService.
func ParseEndpoints(data []byte, ns string) (Endpoints, error) {
	var raw rawObject
	if err := json.Unmarshal(data, &raw); err != nil {
		return Endpoints{}, fmt.Errorf("not a JSON object: %w", err)
	}
	return endpointsFrom(&raw, ns)
}

func endpointsFrom(raw *rawObject, ns string) (Endpoints, error) {
	var e Endpoints
	var err error
	if e.Namespace, e.Name, err = meta(raw, "Endpoints", ns); err != nil {
		return Endpoints{}, err
	}
	for i, rs := range raw.Subsets {
		var sub Subset
		for j, ra := range rs.Addresses {
			f := fmt.Sprintf("subsets[%d].addresses[%d].ip", i, j)
			v, err := str(f, ra.IP)
			if err == nil {
				var a netip.Addr
				if a, err = netip.ParseAddr(v); err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
					err = fieldErr(f, ra.IP, "must be an IPv4 unicast address")
				} else {
					sub.Addresses = append(sub.Addresses, a)
				}
			}
			if err != nil {
				return Endpoints{}, e.objErr(err)
			}
		}
		for j, rp := range rs.Ports {
			f := fmt.Sprintf("subsets[%d].ports[%d]", i, j)
			var p EndpointPort
			if p.Name, err = str(f+".name", rp.Name); err != nil {
				return Endpoints{}, e.objErr(err)
			}
			if p.Protocol, err = protocol(f+".protocol", rp.Protocol); err != nil {
				return Endpoints{}, e.objErr(err)
			}
			if !present(rp.Port) {
				return Endpoints{}, e.objErr(&FieldError{Field: f + ".port", Reason: "is required"})
			}
			if p.Port, err = portNum(f+".port", rp.Port); err != nil {
				return Endpoints{}, e.objErr(err)
			}
			sub.Ports = append(sub.Ports, p)
		}
		e.Subsets = append(e.Subsets, sub)
	}
	return e, nil
}

func (e Endpoints) objErr(err error) error {
	var fe *FieldError
	if asField(err, &fe) {
		fe.Object = "Endpoints " + e.Ref()
	}
	return err
}

// Object is one item of a file given to apply: a Service or an Endpoints.
type Object struct {
	Service   *Service
	Endpoints *Endpoints
}

// ParseObjects parses a Service, an Endpoints or a v1 List of them. Every
// invalid item is reported, by index, in one joined error.
func ParseObjects(data []byte, ns string) ([]Object, error) {
	var raw rawObject
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	kind, err := str("kind", raw.Kind)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "List":
		var errs []string
		out := make([]Object, 0, len(raw.Items))
		for i, item := range raw.Items {
			var r rawObject
			o, err := func() (Object, error) {
				if err := json.Unmarshal(item, &r); err != nil {
					return Object{}, fmt.Errorf("not a JSON object: %w", err)
				}
				return objectFrom(&r, ns)
			}()
			if err != nil {
				errs = append(errs, fmt.Sprintf("items[%d]: %v", i, err))
				if len(errs) == 20 {
					errs = append(errs, "... (stopped after 20 errors)")
					break
				}
				continue
			}
			out = append(out, o)
		}
		if len(errs) > 0 {
			return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
		}
		return out, nil
	case "":
		return nil, &FieldError{Field: "kind", Reason: "is required: Service, Endpoints or List"}
	}
	o, err := objectFrom(&raw, ns)
	if err != nil {
		return nil, err
	}
	return []Object{o}, nil
}

func objectFrom(r *rawObject, ns string) (Object, error) {
	kind, err := str("kind", r.Kind)
	if err != nil {
		return Object{}, err
	}
	switch kind {
	case "Service":
		s, err := serviceFrom(r, ns)
		return Object{Service: &s}, err
	case "Endpoints":
		e, err := endpointsFrom(r, ns)
		return Object{Endpoints: &e}, err
	}
	return Object{}, fieldErr("kind", r.Kind, "must be Service or Endpoints")
}
