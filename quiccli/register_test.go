package quiccli

import (
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

// homeFiles lists the files under home, relative to it (none if home does
// not exist).
func homeFiles(t *testing.T, home string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == home && os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(home, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestRegisterSavesKeyOnlyWhenRegistered: a registration that fails, for
// whatever reason, leaves no file in the home, so no key lingers that no
// server knows; a registration that succeeds leaves the key (0600) and the
// identity.
func TestRegisterSavesKeyOnlyWhenRegistered(t *testing.T) {
	t.Parallel()
	open := startServer(t)
	invited := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = store.AdmitInvited })
	closed := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = store.AdmitNone })
	register(t, testContext(t), newClient(t), open, "taken")
	nobody := freeUDPAddr(t)

	for _, tc := range []struct {
		name   string
		srv    *srvtest.Server // nil: nobody answers
		client string
		opt    RegisterOptions
		want   string // in the error
	}{
		{"no invite", invited, "alice", RegisterOptions{}, "only with an invite"},
		{"bad invite", invited, "alice", RegisterOptions{Invite: store.InvitePrefix + strings.Repeat("a", 32)}, "new one"},
		{"closed", closed, "alice", RegisterOptions{}, "no new clients"},
		{"name taken", open, "taken", RegisterOptions{}, "already registered"},
		{"invalid name", open, "a/b", RegisterOptions{}, "'/'"},
		{"wrong fingerprint", open, "alice", RegisterOptions{Fingerprint: strings.Repeat("ab", 32)}, "not the --fingerprint"},
		{"no server", nil, "alice", RegisterOptions{}, "no answer from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(testContext(t), 1500*time.Millisecond)
			defer cancel()
			addr := nobody
			if tc.srv != nil {
				addr = tc.srv.Addr
				if tc.opt.Fingerprint == "" {
					tc.opt.Fingerprint = tc.srv.Fingerprint
				}
			}
			c := newClient(t)
			_, err := c.Register(ctx, addr, tc.client, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Register: err = %v, want one mentioning %q", err, tc.want)
			}
			if files := homeFiles(t, c.Home); len(files) != 0 {
				t.Errorf("a failed registration left %v in the home", files)
			}
		})
	}

	t.Run("registered", func(t *testing.T) {
		t.Parallel()
		c := newClient(t)
		id := register(t, testContext(t), c, open, "alice")
		files := homeFiles(t, c.Home)
		if strings.Join(files, " ") != keyFile+" "+identityFile {
			t.Errorf("the home holds %v, want %s and %s", files, keyFile, identityFile)
		}
		for _, f := range files {
			if fi, err := os.Stat(filepath.Join(c.Home, f)); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v, %v; want mode 0600", f, fi.Mode().Perm(), err)
			}
		}
		if _, err := loadKey(filepath.Join(c.Home, keyFile)); err != nil {
			t.Errorf("the saved key: %v", err)
		}
		connect(t, testContext(t), c) // the key is the one registered
		if again := register(t, testContext(t), c, open, "alice"); again.ClientID != id.ClientID {
			t.Errorf("registering again: client %s, want %s", again.ClientID, id.ClientID)
		}
	})
}

// TestRegisterAfterLostAnswer: the server registers a new key, but its
// answer never arrives (here a proxy drops everything the server sends
// from the moment it logs the registration; in life the link fails, or
// the user presses Ctrl-C). The key waits in the home as pending, and
// registering again with it finds the same client, without the invite the
// first attempt used up.
func TestRegisterAfterLostAnswer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var proxy atomic.Pointer[udpProxy] // set once the server runs
	registered := make(chan string, 1) // the client ID the server logged
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.Registration = store.AdmitInvited
		s.Logger = slog.New(&logHook{Handler: s.Logger.Handler(), hook: func(r slog.Record, attrs []slog.Attr) {
			if r.Message != "client registered" {
				return
			}
			if p := proxy.Load(); p != nil {
				p.SetDrop(toClient, 1) // before the Welcome goes out
			}
			for _, a := range attrs {
				if a.Key == "id" {
					select {
					case registered <- a.Value.String():
					default: // the second registration
					}
				}
			}
		}})
	})
	proxy.Store(startUDPProxy(t, srv.Addr, 1))
	c := newClient(t)

	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := c.Register(short, proxy.Load().Addr(), "alice", RegisterOptions{Fingerprint: srv.Fingerprint, Invite: newInvite(t, srv)})
	if err == nil {
		t.Fatal("Register succeeded although the answer was dropped")
	}
	t.Logf("the first Register: %v", err)
	var first string
	select {
	case first = <-registered:
	default:
		t.Fatal("the server did not register the client")
	}
	if files := homeFiles(t, c.Home); strings.Join(files, " ") != pendingKeyFile {
		t.Fatalf("after the lost answer the home holds %v, want only %s", files, pendingKeyFile)
	}
	pending, err := loadKey(filepath.Join(c.Home, pendingKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	id, err := c.Register(ctx, srv.Addr, "alice", RegisterOptions{Fingerprint: srv.Fingerprint})
	if err != nil {
		t.Fatalf("registering again, without the used invite: %v", err)
	}
	if id.ClientID != first {
		t.Errorf("registered as client %s, want %s, the one the lost answer carried", id.ClientID, first)
	}
	saved, err := loadKey(filepath.Join(c.Home, keyFile))
	if err != nil || !saved.Equal(pending) {
		t.Errorf("%s holds another key (%v), not the pending one", keyFile, err)
	}
	if files := homeFiles(t, c.Home); strings.Join(files, " ") != keyFile+" "+identityFile {
		t.Errorf("the home holds %v, want %s and %s", files, keyFile, identityFile)
	}
	connect(t, ctx, c)
}

// logHook is a slog.Handler that shows every record, with the attributes
// of the logger it came through, to hook before passing it on.
type logHook struct {
	slog.Handler
	attrs []slog.Attr
	hook  func(r slog.Record, attrs []slog.Attr)
}

func (h *logHook) Handle(ctx context.Context, r slog.Record) error {
	attrs := append([]slog.Attr(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a); return true })
	h.hook(r, attrs)
	return h.Handler.Handle(ctx, r)
}

func (h *logHook) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &logHook{Handler: h.Handler.WithAttrs(attrs), attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...), hook: h.hook}
}

func (h *logHook) WithGroup(name string) slog.Handler {
	return &logHook{Handler: h.Handler.WithGroup(name), attrs: h.attrs, hook: h.hook}
}
