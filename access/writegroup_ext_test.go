package access_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"portcullis/access"
	"portcullis/access/accesstest"
)

// Writers racing on one accepted connection: every message arrives whole
// (no two interleave), each writer's in the order it wrote them, and
// writers that found a write under way left in batches. Over real TLS.
func TestConcurrentWritesArriveWholeAndInOrder(t *testing.T) {
	p := accesstest.New(t)
	ln, err := access.Listen("tcp", "127.0.0.1:0", access.ListenerConfig{
		Material: accesstest.Material(t, p.Node(t, "core1.internal")),
		Allow:    access.NewAllowList([]string{"edge1.internal"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := tls.Dial("tcp", ln.Addr().String(), access.ClientConfig(accesstest.Material(t, p.Node(t, "edge1.internal")), "core1.internal"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const writers, each = 16, 200
	pad := strings.Repeat("x", 300)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				line := fmt.Sprintf("%02d %04d %s\n", w, i, pad[:(w*7+i)%300])
				if n, err := c.Write([]byte(line)); err != nil || n != len(line) {
					errs <- fmt.Errorf("writer %d message %d: %d of %d bytes, %v", w, i, n, len(line), err)
					return
				}
			}
		}()
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(client)
	next := make([]int, writers)
	for range writers * each {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var w, i int
		if _, err := fmt.Sscanf(line, "%d %d", &w, &i); err != nil {
			t.Fatalf("garbled line %q: %v", line, err)
		}
		if w < 0 || w >= writers || i != next[w] {
			t.Fatalf("line %q: writer %d's message %d expected", line, w, next[w])
		}
		if want := fmt.Sprintf("%02d %04d %s\n", w, i, pad[:(w*7+i)%300]); line != want {
			t.Fatalf("line %q, want %q", line, want)
		}
		next[w]++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	batches, joined, busy := access.WriteStats(c)
	t.Logf("%d messages, %d of them in %d batches", writers*each, joined, batches)
	if batches == 0 || joined <= batches {
		t.Fatalf("%d batches carrying %d messages: no writes were joined", batches, joined)
	}
	if busy {
		t.Fatal("the connection is still marked busy after every write returned")
	}
}

