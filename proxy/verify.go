package proxy

import (
	"fmt"

	"github.com/google/nftables"
)

// verify compares the table with what weft programmed, cheaply: the base
// chains and their rules, the number of chains, the dispatch maps' sizes.
// It returns what differs, or "".
func (p *Proxy) verify(conn *nftables.Conn, k *kernel) string {
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return "listing chains: " + err.Error()
	}
	n := 0
	have := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name == TableName {
			n++
			have[c.Name] = true
		}
	}
	want := len(k.o.rules) + len(k.picks)
	for _, pr := range k.prog {
		if pr.form() == formAffinity {
			want++
		}
	}
	if n != want {
		return fmt.Sprintf("%d chains, want %d", n, want)
	}
	for name, rules := range k.o.rules {
		if !have[name] {
			return "chain " + name + " missing"
		}
		n, err := countRules(int(p.cfg.NetNS), name)
		if err != nil {
			return err.Error()
		}
		if n != rules {
			return fmt.Sprintf("chain %s has %d rules, want %d", name, n, rules)
		}
	}
	withBackends := 0
	for _, pr := range k.prog {
		if len(pr.backends) > 0 {
			withBackends++
		}
	}
	for _, s := range []struct {
		set  *nftables.Set
		want int
	}{{k.o.services, withBackends}, {k.o.noEndpoints, len(k.prog) - withBackends}} {
		n, err := countElems(int(p.cfg.NetNS), s.set.Name)
		if err != nil {
			return err.Error()
		}
		if n != s.want {
			return fmt.Sprintf("map %s has %d elements, want %d", s.set.Name, n, s.want)
		}
	}
	return ""
}
