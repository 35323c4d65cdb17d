package certs_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/qbackup/qbackup/certs"
)

const alpn = "qbackup/1"

// testCerts makes two distinct server certificates, shared by the tests.
var testCerts = sync.OnceValues(func() ([2]tls.Certificate, error) {
	var cs [2]tls.Certificate
	for i := range cs {
		dir, err := os.MkdirTemp("", "certs-test-")
		if err != nil {
			return cs, err
		}
		cs[i], err = certs.LoadOrCreate(dir)
		os.RemoveAll(dir)
		if err != nil {
			return cs, err
		}
	}
	return cs, nil
})

func certPair(t *testing.T) (a, b tls.Certificate) {
	t.Helper()
	cs, err := testCerts()
	if err != nil {
		t.Fatal(err)
	}
	return cs[0], cs[1]
}

func fp(c tls.Certificate) string { return certs.Fingerprint(c.Certificate[0]) }

// tlsServer serves TLS on a loopback TCP listener. After each successful
// handshake it writes one byte (the client reads it, which also makes the
// client process the session tickets) and then waits for the client to
// close. Server-side handshake errors are sent on errs.
func tlsServer(t *testing.T, cfg *tls.Config) (addr string, errs <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 100)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					ch <- err
					return
				}
				if _, err := tc.Write([]byte{1}); err != nil {
					return
				}
				io.Copy(io.Discard, tc)
			})
		}
	})
	return ln.Addr().String(), ch
}

// dialTLS performs a full client handshake and reads the server's byte.
func dialTLS(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

func TestHandshakePinned(t *testing.T) {
	a, b := certPair(t)
	errFirstUse := errors.New("user said no")
	tests := []struct {
		name       string
		serverCert tls.Certificate
		pin        string
		onFirstUse func(string) error
		wantErr    error  // checked with errors.Is, or
		wantMis    bool   // want a *MismatchError
		wantMsg    string // substring of the client error
	}{
		{name: "match", serverCert: a, pin: fp(a)},
		{name: "match, user-formatted pin", serverCert: a, pin: "SHA256:" + strings.ToUpper(fp(a))},
		{name: "mismatch", serverCert: b, pin: fp(a), wantMis: true, wantMsg: "server certificate changed"},
		{name: "mismatch ignores onFirstUse", serverCert: b, pin: fp(a), onFirstUse: func(string) error { return nil }, wantMis: true},
		{name: "no pin, no onFirstUse", serverCert: a, wantMsg: "trust on first use is disabled"},
		{name: "onFirstUse error", serverCert: a, onFirstUse: func(string) error { return errFirstUse }, wantErr: errFirstUse},
		{name: "malformed pin", serverCert: a, pin: "abc", wantMsg: "invalid fingerprint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, serverErrs := tlsServer(t, certs.ServerConfig(tc.serverCert, alpn))
			cs, err := dialTLS(addr, certs.ClientConfig(tc.pin, tc.onFirstUse, alpn))
			wantFail := tc.wantErr != nil || tc.wantMis || tc.wantMsg != ""
			if !wantFail {
				if err != nil {
					t.Fatalf("handshake failed: %v", err)
				}
				if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != alpn {
					t.Errorf("version %x, ALPN %q; want TLS 1.3, %q", cs.Version, cs.NegotiatedProtocol, alpn)
				}
				return
			}
			if err == nil {
				t.Fatal("handshake succeeded, want failure")
			}
			t.Logf("client error: %v (%T)", err, err)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantErr)
			}
			var mis *certs.MismatchError
			if got := errors.As(err, &mis); got != tc.wantMis {
				t.Errorf("errors.As(*MismatchError) = %v, want %v", got, tc.wantMis)
			} else if got {
				if mis.Pinned != fp(a) || mis.Presented != fp(b) {
					t.Errorf("MismatchError = %+v, want Pinned %s, Presented %s", mis, fp(a), fp(b))
				}
				if err.Error() != mis.Error() {
					t.Errorf("handshake error message %q, want the MismatchError's %q", err, mis)
				}
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
			// The server learns that the client rejected its certificate.
			if serr := <-serverErrs; !strings.Contains(serr.Error(), "bad certificate") {
				t.Errorf("server error = %v, want the bad_certificate alert", serr)
			}
		})
	}
}

func TestHandshakeTOFU(t *testing.T) {
	a, b := certPair(t)
	var calls []string
	cfg := certs.ClientConfig("", func(fp string) error {
		calls = append(calls, fp) // handshakes below are sequential
		return nil
	}, alpn)

	addrA, _ := tlsServer(t, certs.ServerConfig(a, alpn))
	for i := range 3 {
		if _, err := dialTLS(addrA, cfg); err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
	}
	if len(calls) != 1 || calls[0] != fp(a) {
		t.Fatalf("onFirstUse calls = %q, want exactly [%s]", calls, fp(a))
	}

	// The config now pins A: a different certificate is a mismatch, and
	// onFirstUse is not asked again. Clones share the learned pin.
	addrB, _ := tlsServer(t, certs.ServerConfig(b, alpn))
	for _, c := range []*tls.Config{cfg, cfg.Clone()} {
		_, err := dialTLS(addrB, c)
		var mis *certs.MismatchError
		if !errors.As(err, &mis) || mis.Pinned != fp(a) || mis.Presented != fp(b) {
			t.Errorf("after TOFU of A, server B: err = %v, want MismatchError{%s, %s}", err, fp(a), fp(b))
		}
	}
	if len(calls) != 1 {
		t.Errorf("onFirstUse called %d times, want 1", len(calls))
	}
}

func TestHandshakeTOFURejectedIsNotRemembered(t *testing.T) {
	a, _ := certPair(t)
	addr, _ := tlsServer(t, certs.ServerConfig(a, alpn))
	var calls atomic.Int32
	cfg := certs.ClientConfig("", func(string) error {
		if calls.Add(1) == 1 {
			return errors.New("not now")
		}
		return nil
	}, alpn)
	if _, err := dialTLS(addr, cfg); err == nil || !strings.Contains(err.Error(), "not now") {
		t.Fatalf("first handshake: err = %v, want \"not now\"", err)
	}
	if _, err := dialTLS(addr, cfg); err != nil {
		t.Fatalf("second handshake: %v", err)
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("onFirstUse called %d times, want 2", got)
	}
}

// countingCache records whether a session was handed out for resumption.
type countingCache struct {
	tls.ClientSessionCache
	hits atomic.Int32
}

func (c *countingCache) Get(key string) (*tls.ClientSessionState, bool) {
	s, ok := c.ClientSessionCache.Get(key)
	if ok {
		c.hits.Add(1)
	}
	return s, ok
}

func TestHandshakeResumptionIsVerified(t *testing.T) {
	a, b := certPair(t)
	addr, _ := tlsServer(t, certs.ServerConfig(a, alpn))
	cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(8)}

	type call struct {
		resumed bool
		err     error
	}
	var calls []call
	instrument := func(cfg *tls.Config) *tls.Config {
		cfg.ClientSessionCache = cache
		verify := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			calls = append(calls, call{cs.DidResume, err})
			return err
		}
		return cfg
	}

	// Full handshake pinned to A; it stores a session ticket.
	cs, err := dialTLS(addr, instrument(certs.ClientConfig(fp(a), nil, alpn)))
	if err != nil {
		t.Fatal(err)
	}
	if cs.DidResume {
		t.Fatal("first handshake resumed")
	}
	// Resumed handshake, still pinned to A.
	cs, err = dialTLS(addr, instrument(certs.ClientConfig(fp(a), nil, alpn)))
	if err != nil {
		t.Fatal(err)
	}
	if !cs.DidResume {
		t.Fatal("second handshake did not resume; the test proves nothing")
	}
	// Resumed handshake with a pin that does not match the session's
	// certificate: VerifyConnection runs and rejects it.
	_, err = dialTLS(addr, instrument(certs.ClientConfig(fp(b), nil, alpn)))
	var mis *certs.MismatchError
	if !errors.As(err, &mis) || mis.Pinned != fp(b) || mis.Presented != fp(a) {
		t.Errorf("resumption with wrong pin: err = %v, want MismatchError{%s, %s}", err, fp(b), fp(a))
	}

	if got := cache.hits.Load(); got != 2 {
		t.Errorf("session cache hits = %d, want 2", got)
	}
	want := []struct{ resumed, failed bool }{{false, false}, {true, false}, {true, true}}
	if len(calls) != len(want) {
		t.Fatalf("VerifyConnection calls = %+v, want %d calls", calls, len(want))
	}
	for i, w := range want {
		if calls[i].resumed != w.resumed || (calls[i].err != nil) != w.failed {
			t.Errorf("VerifyConnection call %d: resumed %v, err %v; want resumed %v, failed %v", i, calls[i].resumed, calls[i].err, w.resumed, w.failed)
		}
	}
}

func TestServerConfigIsTLS13Only(t *testing.T) {
	a, _ := certPair(t)
	addr, _ := tlsServer(t, certs.ServerConfig(a, alpn))
	cfg := certs.ClientConfig(fp(a), nil, alpn)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, err := dialTLS(addr, cfg); err == nil {
		t.Error("TLS 1.2 handshake succeeded")
	}
}
