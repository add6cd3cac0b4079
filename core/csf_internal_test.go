package core

import (
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"portcullis/core/c3p"
)

// The factory keeps at most maxMCUs: a new MCU past them is refused while
// known ones go on reporting; an MCU's ID is its reporter's while it is
// alive, and free once it is dead.
func TestMCURegistryBounds(t *testing.T) {
	sf := &serverFactory{cfg: func() ConferencingConfig {
		return ConferencingConfig{HeartbeatInterval: time.Second, HeartbeatMisses: 3}
	},
		log: slog.New(slog.DiscardHandler), mcus: map[string]*mcuState{}}
	mcu := func(id string) c3p.MCU { return c3p.MCU{ID: id, Type: MediaChat, URI: "https://203.0.113.5/"} }
	for i := range maxMCUs {
		if err := sf.heartbeat(mcu("m"+strconv.Itoa(i)), "mcu1.internal"); err != nil {
			t.Fatalf("MCU %d: %v", i, err)
		}
	}
	if err := sf.heartbeat(mcu("one-more"), "mcu1.internal"); !errors.Is(err, errTooManyMCUs) {
		t.Fatalf("MCU past %d: %v, want errTooManyMCUs", maxMCUs, err)
	}
	if err := sf.heartbeat(mcu("m0"), "mcu1.internal"); err != nil {
		t.Fatalf("a known MCU's next report: %v", err)
	}
	if err := sf.heartbeat(mcu("m1"), "mcu2.internal"); !errors.Is(err, errMCUOwned) {
		t.Fatalf("another certificate's report for a live MCU: %v, want errMCUOwned", err)
	}
	sf.mcus["m1"].seen = time.Now().Add(-time.Minute) // dead: it missed its heartbeats
	if err := sf.heartbeat(mcu("m1"), "mcu2.internal"); err != nil {
		t.Fatalf("taking a dead MCU's ID: %v", err)
	}
}
