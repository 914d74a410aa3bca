package cluster

import (
	"slices"
	"testing"
)

const pingOut = `PING 172.17.42.32 (172.17.42.32) 56(84) bytes of data.
64 bytes from 172.17.42.32: icmp_seq=1 ttl=64 time=0.061 ms
64 bytes from 172.17.42.32: icmp_seq=2 ttl=64 time=0.050 ms
64 bytes from 172.17.42.32: icmp_seq=2 ttl=64 time=0.052 ms (DUP!)
64 bytes from 172.17.42.32: icmp_seq=5 ttl=64 time=0.044 ms

--- 172.17.42.32 ping statistics ---
5 packets transmitted, 3 received, +1 duplicates, 40% packet loss, time 4094ms
rtt min/avg/max/mdev = 0.044/0.051/0.061/0.006 ms
`

func TestParsePing(t *testing.T) {
	res, err := ParsePing(pingOut)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 5 || res.Received != 3 || !slices.Equal(res.Lost, []int{3, 4}) {
		t.Errorf("got sent %d received %d lost %v; want 5 3 [3 4]", res.Sent, res.Received, res.Lost)
	}
	if _, err := ParsePing("ping: connect: Network is unreachable\n"); err == nil {
		t.Error("parsed output without a summary")
	}
}

func FuzzParsePing(f *testing.F) {
	f.Add(pingOut)
	f.Add("3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms\n")
	f.Add("99999999999 packets transmitted, 1 received\n64 bytes from x: icmp_seq=0 ttl=1 \n")
	f.Fuzz(func(t *testing.T, out string) {
		res, err := ParsePing(out)
		if err != nil {
			return
		}
		if len(res.Lost) > res.Sent || len(res.Lost) > 65535 {
			t.Errorf("lost %d of %d sent", len(res.Lost), res.Sent)
		}
	})
}
