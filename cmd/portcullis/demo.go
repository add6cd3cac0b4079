package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"portcullis/core"
	"portcullis/core/c3p"
	"portcullis/core/store"
	"portcullis/internal/devmode"
	"portcullis/internal/lifecycle"
	"portcullis/internal/sipclient"
	"portcullis/internal/sipnode"
)

// demo runs `portcullis demo`: core and edge in dev mode, one meeting, the
// organiser inside, two remote users through the edge and an anonymous
// guest; it prints the roster changes and the IM transcript as the
// organiser sees them.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "dev data folder (default: a new temporary one, removed afterwards)")
	verbose := fs.Bool("verbose", false, "show the servers' logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	dir := *data
	if dir == "" {
		tmp, err := os.MkdirTemp("", "portcullis-demo-")
		if err != nil {
			fmt.Fprintln(stderr, "portcullis demo:", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	logOut := io.Discard
	if *verbose {
		logOut = stderr
	}
	level := new(slog.LevelVar)
	sipnode.RouteLibraryLogs(lifecycle.NewLogger(logOut, level))
	signals := make(chan os.Signal, 1)
	ready := make(chan devmode.Endpoints, 1)
	done := make(chan error, 1)
	go func() {
		done <- devmode.Run(ctx, devmode.Options{DataDir: dir, Log: lifecycle.NewLogger(logOut, level), Level: level, Signals: signals, Out: logOut,
			Ready: func(ep devmode.Endpoints) { ready <- ep }})
	}()
	var ep devmode.Endpoints
	select {
	case ep = <-ready:
	case err := <-done:
		fmt.Fprintln(stderr, "portcullis demo: dev mode did not start:", err)
		return 1
	case <-time.After(30 * time.Second):
		fmt.Fprintln(stderr, "portcullis demo: dev mode did not become ready in 30 s")
		return 1
	}
	err := runDemo(ctx, dir, ep, stdout)
	signals <- os.Interrupt
	if derr := <-done; derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		fmt.Fprintln(stderr, "portcullis demo:", err)
		return 1
	}
	return 0
}

func runDemo(ctx context.Context, dir string, ep devmode.Endpoints, out io.Writer) error {
	address := func(protocol string) string {
		for _, l := range ep.Listeners {
			if l.Protocol == protocol {
				return l.Address
			}
		}
		return ""
	}
	edge, inside := address("sip-tls-external"), address("sip-tls-users")
	st, err := store.OpenShared(ctx, store.Config{Driver: "sqlite", Path: dir + "/core.db"})
	if err != nil {
		return err
	}
	m, err := core.NewFactory(st).Create(ctx, core.MeetingOptions{Organizer: "sip:alice@example.test", Admission: core.AdmitAnonymous, Subject: "Portcullis demo"})
	st.Close()
	if err != nil {
		return err
	}
	uri := core.ConferenceURI(m.Organizer, m.ID)
	fmt.Fprintf(out, "meeting %s (key %s)\n\n", uri, m.Key)

	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	joinAs := func(server, name, aor, password, display string) (*sipclient.Conference, *sipclient.Client, error) {
		if password == "" {
			p, err := devmode.UserPassword(dir, aor)
			if err != nil {
				return nil, nil, err
			}
			password = p
		}
		c, err := sipclient.New(sipclient.Options{Server: server, ServerName: name, CAFile: ep.CAFile, AOR: aor, Password: password, DisplayName: display})
		if err != nil {
			return nil, nil, err
		}
		jctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		cf, err := c.Join(jctx, uri)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return cf, c, nil
	}
	// The organiser, inside; the transcript is what she sees.
	alice, ac, err := joinAs(inside, "core.dev.internal", "sip:alice@example.test", "", "Alice")
	if err != nil {
		return fmt.Errorf("alice joins: %w", err)
	}
	defer ac.Close()
	seen := make(chan struct{}, 100)
	go func() {
		var shown = alice.Roster()
		for ev := range alice.Events() {
			switch {
			case ev.Roster != nil:
				mu.Lock()
				printRosterChange(out, shown, *ev.Roster)
				mu.Unlock()
				shown = *ev.Roster
			case ev.IM != nil:
				say("  %s: %s", ev.IM.From, ev.IM.Text)
			}
			seen <- struct{}{}
		}
	}()
	settle := func() { // let the notifications of one step arrive before the next
		for {
			select {
			case <-seen:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	settle()
	say("# bob and carol join from outside, through the edge; a guest joins with the key")
	bob, bc, err := joinAs(edge, "edge.dev.internal", "sip:bob@example.test", "", "Bob")
	if err != nil {
		return fmt.Errorf("bob joins: %w", err)
	}
	defer bc.Close()
	carol, cc, err := joinAs(edge, "edge.dev.internal", "sip:carol@example.test", "", "Carol")
	if err != nil {
		return fmt.Errorf("carol joins: %w", err)
	}
	defer cc.Close()
	guestAddr := guestAOR("Grace")
	guest, gc, err := joinAs(edge, "edge.dev.internal", guestAddr, m.Key, "Grace")
	if err != nil {
		return fmt.Errorf("the guest joins: %w", err)
	}
	defer gc.Close()
	settle()
	say("\n# group IM (the edge's IM filter makes carol's link non-clickable)")
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, s := range []struct {
		cf   *sipclient.Conference
		text string
	}{{alice, "Welcome, everyone"}, {bob, "Hello from the road"}, {carol, "The agenda: http://intranet.example.test/agenda"}, {guest, "Thanks for having me"}} {
		if err := s.cf.IM(sctx, s.text); err != nil {
			return err
		}
		if s.cf == alice {
			say("  sip:alice@example.test: %s", s.text)
		}
		settle()
	}
	say("\n# alice promotes bob; bob locks the meeting; a late guest is refused")
	promote := c3p.Cmd("modifyUserRoles")
	promote.User = &c3p.User{Entity: "sip:bob@example.test", Roles: []string{"presenter"}}
	if err := demoCommand(sctx, alice, promote); err != nil {
		return err
	}
	settle()
	lock := c3p.Cmd("modifyConferenceLock")
	yes, no := true, false
	lock.Locked = &yes
	if err := demoCommand(sctx, bob, lock); err != nil {
		return err
	}
	settle()
	if _, _, err := joinAs(edge, "edge.dev.internal", guestAOR("Late"), m.Key, "Late"); err != nil {
		say("  a late guest: %v", err)
	} else {
		return fmt.Errorf("a late guest joined a locked meeting")
	}
	lock.Locked = &no
	if err := demoCommand(sctx, bob, lock); err != nil {
		return err
	}
	settle()
	say("\n# carol, an attendee, tries to eject the guest: refused; alice ejects her")
	eject := c3p.Cmd("deleteUser")
	eject.User = &c3p.User{Entity: guestAddr}
	if err := demoCommand(sctx, carol, eject); err != nil {
		say("  carol: %v", err)
	}
	if err := demoCommand(sctx, alice, eject); err != nil {
		return err
	}
	settle()
	say("\n# everyone leaves")
	for _, cf := range []*sipclient.Conference{carol, bob} {
		cf.Leave(sctx)
		settle()
	}
	alice.Leave(sctx)
	return nil
}

func demoCommand(ctx context.Context, cf *sipclient.Conference, cmd c3p.Command) error {
	res, err := cf.Command(ctx, cmd)
	if err != nil {
		return err
	}
	if res.Code == c3p.Failure {
		return fmt.Errorf("%s refused: %s (%s)", cmd.Name(), res.Reason, strings.TrimSpace(res.Result.ErrorText))
	}
	return nil
}
