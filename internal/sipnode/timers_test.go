package sipnode

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// An INVITE answered 2xx over TCP leaves nothing of its transactions in
// memory once Timers L and M (acceptedHold) have run: sipgo keeps both
// transactions, with their messages, until those timers fire, even after
// they have ended. With RFC 6026's 64×T1 this test would wait 32 s.
func TestInviteTransactionsReleasedAfterAcceptedHold(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvUA, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	defer srvUA.Close()
	srv, err := sipgo.NewServer(srvUA)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan weak.Pointer[sip.Request], 1)
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		served <- weak.Make(req)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	go func() { _ = srv.ServeTCP(ln) }()

	cliUA, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	defer cliUA.Close()
	cli, err := sipgo.NewClient(cliUA)
	if err != nil {
		t.Fatal(err)
	}
	sent := invite(t, cli, ln.Addr().(*net.TCPAddr).Port)
	var inServer weak.Pointer[sip.Request]
	select {
	case inServer = <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("the server saw no INVITE")
	}

	deadline := time.Now().Add(acceptedHold + 3*time.Second)
	for sent.Value() != nil || inServer.Value() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("INVITE still held %v after the call was answered (client side: %v, server side: %v)",
				acceptedHold+3*time.Second, sent.Value() != nil, inServer.Value() != nil)
		}
		runtime.GC()
		time.Sleep(200 * time.Millisecond)
	}
}

// invite sends an INVITE over TCP, waits for its 2xx and ends the client
// transaction, as the proxies do; it returns a weak pointer to the request.
func invite(t *testing.T, cli *sipgo.Client, port int) weak.Pointer[sip.Request] {
	t.Helper()
	params := sip.NewParams()
	params.Add("transport", "tcp")
	req := sip.NewRequest(sip.INVITE, sip.Uri{User: "bob", Host: "127.0.0.1", Port: port, UriParams: params})
	req.SetBody(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := cli.TransactionRequest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Terminate()
	select {
	case res := <-tx.Responses():
		if res.StatusCode != 200 {
			t.Fatalf("INVITE answered %d", res.StatusCode)
		}
	case <-ctx.Done():
		t.Fatal("no answer to the INVITE")
	}
	return weak.Make(req)
}
