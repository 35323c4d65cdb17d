package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func openInvites(t *testing.T, dir string) *InviteBook {
	t.Helper()
	b, err := OpenInvites(t.Context(), dir)
	if err != nil {
		t.Fatalf("OpenInvites: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestAdmit(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := t.Context()
	book := openInvites(t, dir) // while the Store has the directory open
	token, inv, err := book.Create(ctx, time.Hour, 2, "laptops")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, InvitePrefix) || len(token) > MaxInviteLen {
		t.Fatalf("token %q: want prefix %q and at most %d bytes", token, InvitePrefix, MaxInviteLen)
	}
	expired, _, err := book.Create(ctx, time.Nanosecond, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	revoked, rinv, err := book.Create(ctx, time.Hour, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := book.Revoke(ctx, rinv.ID); err != nil {
		t.Fatal(err)
	}
	if err := book.Revoke(ctx, rinv.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Revoke = %v, want ErrNotFound", err)
	}
	time.Sleep(time.Millisecond) // past the short invite's expiry

	existing := register(t, s, "old")
	taken := register(t, s, "taken")

	tests := []struct {
		name    string
		client  string
		key     []byte
		adm     Admission
		invite  string
		want    error
		created bool
	}{
		{"closed refuses a newcomer", "new1", newKey(t), AdmitNone, "", ErrRegistrationClosed, false},
		{"closed refuses even with an invite", "new1", newKey(t), AdmitNone, token, ErrRegistrationClosed, false},
		{"closed still lets a registered client re-register", "old", existing.PublicKey, AdmitNone, "", nil, false},
		{"closed does not say a name is taken", "taken", newKey(t), AdmitNone, "", ErrRegistrationClosed, false},
		{"invite required", "new2", newKey(t), AdmitInvited, "", ErrBadInvite, false},
		{"wrong invite", "new2", newKey(t), AdmitInvited, InvitePrefix + strings.Repeat("a", 32), ErrBadInvite, false},
		{"expired invite", "new2", newKey(t), AdmitInvited, expired, ErrBadInvite, false},
		{"revoked invite", "new2", newKey(t), AdmitInvited, revoked, ErrBadInvite, false},
		{"no name probing without an invite", "taken", newKey(t), AdmitInvited, "nope", ErrBadInvite, false},
		{"taken name with a good invite keeps the use", "taken", newKey(t), AdmitInvited, token, ErrNameTaken, false},
		{"first use", "new2", newKey(t), AdmitInvited, token, nil, true},
		{"re-register needs no use", "new2", nil, AdmitInvited, "", nil, false},
		{"second use", "new3", newKey(t), AdmitInvited, token, nil, true},
		{"used up", "new4", newKey(t), AdmitInvited, token, ErrBadInvite, false},
		{"open admits anyone", "new5", newKey(t), AdmitAll, "", nil, true},
	}
	keys := map[string][]byte{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == nil {
				key = keys[tt.client]
			}
			c, created, err := s.Admit(ctx, tt.client, key, tt.adm, tt.invite)
			if !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("Admit = %v, want %v", err, tt.want)
			}
			if created != tt.created {
				t.Fatalf("created = %v, want %v", created, tt.created)
			}
			if err == nil {
				keys[tt.client] = key
				if c.Name != tt.client || !bytes.Equal(c.PublicKey, key) {
					t.Fatalf("client = %q", c.Name)
				}
			}
			if tt.want == ErrRegistrationClosed || tt.want == ErrBadInvite {
				if _, err := s.Client(ctx, c.ID); err == nil && c.ID != (ClientID{}) {
					t.Fatal("a refused client exists")
				}
			}
		})
	}
	_ = taken

	list, err := book.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != inv.ID || list[0].Uses != 0 || list[0].Note != "laptops" {
		t.Fatalf("List = %+v; want the used-up and the expired invite", list)
	}
	var who []string
	rows, err := s.db.QueryContext(ctx, "SELECT name FROM clients WHERE invite = ? ORDER BY name", inv.ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		rows.Scan(&n)
		who = append(who, n)
	}
	rows.Close()
	if strings.Join(who, ",") != "new2,new3" {
		t.Fatalf("clients admitted by the invite: %v", who)
	}
}

// The database holds the invite's hash, never the token.
func TestInviteTokenNotStored(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	book := openInvites(t, dir)
	token, _, err := book.Create(t.Context(), time.Hour, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Admit(t.Context(), "c", newKey(t), AdmitInvited, token); err != nil {
		t.Fatal(err)
	}
	book.Close()
	s.Close()
	secret := token[len(InvitePrefix):]
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secret)) || bytes.Contains(bytes.ToUpper(b), []byte(strings.ToUpper(secret))) {
			t.Errorf("%s holds the invite token", path)
		}
		return nil
	})
}

func TestOpenInvitesErrors(t *testing.T) {
	if _, err := OpenInvites(t.Context(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "start qbackupd") {
		t.Fatalf("OpenInvites of an empty dir = %v; want advice to start qbackupd", err)
	}
	book := openInvites(t, func() string { d := t.TempDir(); openStore(t, d).Close(); return d }())
	for _, c := range []struct {
		ttl  time.Duration
		uses int
	}{{0, 1}, {time.Hour, 0}, {-time.Hour, 1}} {
		if _, _, err := book.Create(t.Context(), c.ttl, c.uses, ""); err == nil {
			t.Errorf("Create(%v, %d) succeeded", c.ttl, c.uses)
		}
	}
}
