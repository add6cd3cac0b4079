package core

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"portcullis/core/c3p"
)

// The Conferencing Server Factory: MCUs register with their media type,
// address and load by heartbeat (C3P ping over HTTPS); a meeting is
// provisioned on the least-loaded live MCU of the type it needs; an MCU that
// misses its heartbeats is not chosen, and its meetings move to another MCU
// of the type, or lose that medium with a roster notification.

// Media types of MCUs.
const MediaChat = "chat"

// ErrNoMCU is returned when no live MCU of a type is registered.
var ErrNoMCU = errors.New("no live MCU of that type")

// ConferencingConfig is the core's `conferencing` section.
type ConferencingConfig struct {
	// IMMCUs is how many IM MCUs run in the core's process (each its own
	// component, registered through the factory like a remote one).
	IMMCUs int `yaml:"im_mcus"`
	// HeartbeatInterval: how often an MCU reports; HeartbeatMisses: how many
	// missed reports make it dead.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	HeartbeatMisses   int           `yaml:"heartbeat_misses"`
	// MaxMeetingsPerOrganizer bounds the meetings a user schedules over SIP
	// (addConference); operators' commands and the HTTPS API are not
	// bound.
	MaxMeetingsPerOrganizer int `yaml:"max_meetings_per_organizer"`
	// MaxParticipants bounds a meeting's participants (486 to more
	// attendees; the organiser and presenters still get in).
	MaxParticipants int `yaml:"max_participants"`
}

// mcuState is what the factory knows of an MCU.
type mcuState struct {
	c3p.MCU
	seen  time.Time
	owner string // the certificate name it reports with
}

// maxMCUs bounds the MCUs the factory keeps (live and dead).
const maxMCUs = 1024

// Reports refused: for an MCU another certificate reports for (while it
// is alive), and for a new MCU past maxMCUs.
var (
	errMCUOwned    = errors.New("the MCU reports with another certificate")
	errTooManyMCUs = errors.New("too many MCUs")
)

type serverFactory struct {
	cfg  func() ConferencingConfig
	log  *slog.Logger
	lost func(id string) // called once for an MCU that stopped reporting

	mu   sync.Mutex
	mcus map[string]*mcuState
}

func (sf *serverFactory) deadAfter() time.Duration {
	c := sf.cfg()
	return c.HeartbeatInterval * time.Duration(c.HeartbeatMisses)
}

// heartbeat records an MCU's report, made with owner's certificate. An MCU
// is its first reporter's while it is alive: another certificate cannot
// report its load or address (a holder of any internal certificate could
// otherwise steer meetings away from an MCU, or to an address of its
// choosing); once it is dead, anyone may take the ID.
func (sf *serverFactory) heartbeat(m c3p.MCU, owner string) error {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	old, known := sf.mcus[m.ID]
	switch {
	case known && old.owner != owner && time.Since(old.seen) <= sf.deadAfter():
		return errMCUOwned
	case !known && len(sf.mcus) >= maxMCUs:
		return errTooManyMCUs
	case !known:
		sf.log.Info("mcu registered", "mcu", m.ID, "type", m.Type, "uri", m.URI, "load", m.Load, "reporter", owner)
	}
	sf.mcus[m.ID] = &mcuState{MCU: m, seen: time.Now(), owner: owner}
	return nil
}

// pick chooses the least-loaded live MCU of a type that usable accepts
// (ties: by ID).
func (sf *serverFactory) pick(typ, except string, usable func(id string) bool) (string, error) {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	var live []*mcuState
	for _, m := range sf.mcus {
		if m.Type == typ && m.ID != except && usable(m.ID) && time.Since(m.seen) <= sf.deadAfter() {
			live = append(live, m)
		}
	}
	if len(live) == 0 {
		return "", fmt.Errorf("%w (%s)", ErrNoMCU, typ)
	}
	slices.SortFunc(live, func(a, b *mcuState) int {
		if a.Load != b.Load {
			return a.Load - b.Load
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	live[0].Load++ // counts until its next report
	return live[0].ID, nil
}

// sweep finds MCUs that stopped reporting, until ctx ends.
func (sf *serverFactory) sweep(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(sf.cfg().HeartbeatInterval):
		}
		var dead []string
		sf.mu.Lock()
		for id, m := range sf.mcus {
			if time.Since(m.seen) > sf.deadAfter() {
				dead = append(dead, id)
				delete(sf.mcus, id)
			}
		}
		sf.mu.Unlock()
		for _, id := range dead {
			sf.log.Warn("mcu missed its heartbeats: not chosen any more, its meetings move", "mcu", id)
			sf.lost(id)
		}
	}
}

// c3pOverHTTPS serves POST /v1/c3p: an MCU's heartbeat (ping with <mcu>).
func (a *api) c3pOverHTTPS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	if !c3p.IsC3P(r.Header.Get("Content-Type")) {
		http.Error(w, "Content-Type must be "+c3p.ContentType, http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, c3p.MaxSize))
	if err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	req, err := c3p.Parse(body)
	if err != nil {
		http.Error(w, "malformed C3P", http.StatusBadRequest)
		return
	}
	var res *c3p.Response
	switch {
	case req.Command.Name() == "ping" && req.Command.MCU != nil && req.Command.MCU.ID != "" && req.Command.MCU.Type != "":
		owner := ""
		if names := callerNames(r); len(names) > 0 {
			owner = names[0]
		}
		if err := a.csf.heartbeat(*req.Command.MCU, owner); err != nil {
			a.log.Warn("mcu heartbeat refused", "mcu", req.Command.MCU.ID, "reporter", owner, "error", err)
			res = c3p.Reply(req, c3p.Failure, c3p.ReasonForbidden, err.Error())
			break
		}
		res = c3p.Reply(req, c3p.Success, "", "")
	case req.Command.Name() == "ping":
		res = c3p.Reply(req, c3p.Success, "", "")
	default:
		res = c3p.Reply(req, c3p.Failure, c3p.ReasonNotSupported, "the Conferencing Server Factory takes ping (MCU heartbeats)")
	}
	w.Header().Set("Content-Type", c3p.ContentType)
	_, _ = w.Write(c3p.Marshal(res))
}

// reporter sends an MCU's heartbeats to the factory's HTTPS URL.
type reporter struct {
	url    string
	client *http.Client
	log    *slog.Logger
}

func newReporter(url string, conf *tls.Config, log *slog.Logger) *reporter {
	return &reporter{url: url, log: log, client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}}
}

// report sends one heartbeat.
func (r *reporter) report(ctx context.Context, m c3p.MCU) error {
	cmd := c3p.Cmd("ping")
	cmd.MCU = &m
	body := c3p.Marshal(c3p.NewRequest("mcu:"+m.ID, r.url, fmt.Sprint(time.Now().UnixNano()), cmd))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", c3p.ContentType)
	res, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, c3p.MaxSize))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("heartbeat: HTTP %d", res.StatusCode)
	}
	if cr, err := c3p.ParseResponse(b); err != nil || cr.Code != c3p.Success {
		return fmt.Errorf("heartbeat refused: %v", err)
	}
	return nil
}
