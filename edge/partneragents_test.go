package edge

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"

	"portcullis/internal/sipnode"
)

// Past the cap on partner agents, the agent of the domain idle longest
// (more than keepIdle) is closed to make room; while every domain has
// been used within keepIdle a new one is refused.
func TestPartnerAgentsMakeRoom(t *testing.T) {
	p := &partnerAgents{cert: func() *tls.Certificate { return nil }, hostname: "sip.example.test", max: 65536,
		log: slog.New(slog.DiscardHandler), maxAgents: 2, agents: map[string]*sipnode.Node{}}
	defer p.Close()
	a, err := p.agent("a.test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.agent("b.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.agent("c.test"); err == nil || !strings.Contains(err.Error(), "partner domains in use") {
		t.Fatalf("a third domain while both are in use: %v", err)
	}
	p.mu.Lock()
	p.lastUse["a.test"] = time.Now().Add(-keepIdle - time.Second)
	p.lastUse["b.test"] = time.Now().Add(-keepIdle - 2*time.Second) // idle longest
	p.mu.Unlock()
	if _, err := p.agent("A.test"); err != nil { // a request for a.test: in use again
		t.Fatal(err)
	}
	c, err := p.agent("c.test")
	if err != nil {
		t.Fatalf("a third domain once b.test is idle: %v", err)
	}
	p.mu.Lock()
	_, hasB := p.agents["b.test"]
	got := len(p.agents)
	p.mu.Unlock()
	if hasB || got != 2 || p.agents["a.test"] != a || p.agents["c.test"] != c {
		t.Fatalf("agents after making room: %d, b.test kept %v", got, hasB)
	}
}
