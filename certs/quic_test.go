package certs_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quic"

	"github.com/qbackup/qbackup/certs"
)

// quicServer listens on UDP 127.0.0.1:0 and accepts connections until the
// test ends.
func quicServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", certs.ServerConfig(cert, alpn), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				<-c.Context().Done()
			}()
		}
	}()
	return ln.Addr().String()
}

func dialQUIC(t *testing.T, addr string, cfg *tls.Config) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := quic.DialAddr(ctx, addr, cfg, nil)
	if c != nil {
		t.Cleanup(func() { c.CloseWithError(0, "") })
	}
	return c, err
}

// errorChain describes err and everything it wraps, depth first.
func errorChain(err error) string {
	var b strings.Builder
	var walk func(error, int)
	walk = func(err error, depth int) {
		if err == nil {
			return
		}
		fmt.Fprintf(&b, "\n%s%T: %v", strings.Repeat("  ", depth), err, err)
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap(), depth+1)
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e, depth+1)
			}
		}
	}
	walk(err, 0)
	return b.String()
}

func TestQUIC(t *testing.T) {
	a, b := certPair(t)
	addrA := quicServer(t, a)

	t.Run("pinned match", func(t *testing.T) {
		c, err := dialQUIC(t, addrA, certs.ClientConfig(fp(a), nil, alpn))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		st := c.ConnectionState().TLS
		if st.NegotiatedProtocol != alpn || st.Version != tls.VersionTLS13 {
			t.Errorf("ALPN %q, version %x", st.NegotiatedProtocol, st.Version)
		}
		if got := certs.Fingerprint(st.PeerCertificates[0].Raw); got != fp(a) {
			t.Errorf("peer fingerprint %s, want %s", got, fp(a))
		}
	})

	t.Run("pinned mismatch", func(t *testing.T) {
		_, err := dialQUIC(t, addrA, certs.ClientConfig(fp(b), nil, alpn))
		if err == nil {
			t.Fatal("dial succeeded, want mismatch")
		}
		t.Logf("quic.DialAddr error chain:%s", errorChain(err))

		var mis *certs.MismatchError
		if !errors.As(err, &mis) {
			t.Fatalf("errors.As(*MismatchError) = false for %v", err)
		}
		if mis.Pinned != fp(b) || mis.Presented != fp(a) {
			t.Errorf("MismatchError = %+v, want Pinned %s, Presented %s", mis, fp(b), fp(a))
		}
		// quic-go reports it as a local CRYPTO_ERROR carrying the TLS
		// bad_certificate alert (0x100 + 42).
		var te *quic.TransportError
		if !errors.As(err, &te) {
			t.Fatalf("errors.As(*quic.TransportError) = false")
		}
		if te.Remote || te.ErrorCode != quic.TransportErrorCode(0x100+42) {
			t.Errorf("TransportError remote %v, code %#x; want local 0x12a (bad_certificate)", te.Remote, uint64(te.ErrorCode))
		}
		if !strings.Contains(err.Error(), mis.Error()) {
			t.Errorf("error text %q does not include the mismatch", err)
		}
		// Beware: quic-go's TransportError also unwraps to net.ErrClosed,
		// so callers must test for *MismatchError before net.ErrClosed.
		if !errors.Is(err, net.ErrClosed) {
			t.Error("errors.Is(err, net.ErrClosed) = false; quic-go changed, update the ClientConfig docs")
		}
	})

	t.Run("TOFU", func(t *testing.T) {
		var calls []string
		cfg := certs.ClientConfig("", func(fp string) error {
			calls = append(calls, fp)
			return nil
		}, alpn)
		for i := range 2 {
			if _, err := dialQUIC(t, addrA, cfg); err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
		}
		if len(calls) != 1 || calls[0] != fp(a) {
			t.Errorf("onFirstUse calls = %q, want exactly [%s]", calls, fp(a))
		}
	})

	t.Run("onFirstUse error", func(t *testing.T) {
		refuse := errors.New("user refused")
		_, err := dialQUIC(t, addrA, certs.ClientConfig("", func(string) error { return refuse }, alpn))
		if !errors.Is(err, refuse) {
			t.Errorf("dial error = %v, want it to wrap %v", err, refuse)
		}
	})
}
