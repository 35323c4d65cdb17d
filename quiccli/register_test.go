package quiccli

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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

// TestRegisterAfterLostAnswer: the server registered a new key, but its
// answer never arrived (the link failed, the client was killed). The key
// waits in the home as pending, and registering again with it finds the
// same client, without the invite the first attempt used up.
func TestRegisterAfterLostAnswer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = store.AdmitInvited })
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publicKeyDER(priv)
	if err != nil {
		t.Fatal(err)
	}
	// What the first attempt did on the server...
	first, _, err := srv.Store.Admit(ctx, "alice", pub, store.AdmitAll, "")
	if err != nil {
		t.Fatal(err)
	}
	// ... and in the home.
	c := newClient(t)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.Home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Home, pendingKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	id := register(t, ctx, c, srv, "alice")
	if id.ClientID != first.ID.String() {
		t.Errorf("registered as client %s, want %s, the one the lost answer carried", id.ClientID, first.ID)
	}
	saved, err := loadKey(filepath.Join(c.Home, keyFile))
	if err != nil || !saved.Equal(priv) {
		t.Errorf("%s holds another key (%v), not the pending one", keyFile, err)
	}
	if files := homeFiles(t, c.Home); strings.Join(files, " ") != keyFile+" "+identityFile {
		t.Errorf("the home holds %v, want %s and %s", files, keyFile, identityFile)
	}
	connect(t, ctx, c)
}
