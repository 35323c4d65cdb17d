package quiccli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

// qbackupd runs the server's command line and returns stdout, stderr and
// the exit code.
func qbackupd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := quicsrv.Main(context.Background(), args, &out, &errOut)
	t.Logf("qbackupd %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return out.String(), errOut.String(), code
}

// TestCLIInvite: the operator makes an invite with qbackupd while the
// server runs, a user registers with it (by flag, then another by
// environment variable), a used-up or revoked invite is refused with a
// message that says what to do, and the token is never written to the
// client's files or the server's.
func TestCLIInvite(t *testing.T) {
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = store.AdmitInvited })

	noInvite := newCLIUser(t)
	r := noInvite.run("register", "--server", srv.Addr, "--name", "stranger", "--fingerprint", srv.Fingerprint)
	checkFailure(t, r, 1, "only with an invite", "--invite")

	token, errOut, code := qbackupd(t, "invite", "--data", srv.Dir, "--uses", "1", "--note", "alice's laptop")
	token = strings.TrimSpace(token)
	if code != 0 || !strings.HasPrefix(token, store.InvitePrefix) || !strings.Contains(errOut, "qbackup register") {
		t.Fatalf("qbackupd invite: exit %d, token %q", code, token)
	}
	alice := newCLIUser(t)
	alice.ok("register", "--server", srv.Addr, "--name", "alice", "--fingerprint", srv.Fingerprint, "--invite", token)
	// Registering again (to learn the ID on a second machine with the same
	// key) needs no invite.
	alice.ok("register", "--server", srv.Addr, "--name", "alice", "--fingerprint", srv.Fingerprint)

	bob := newCLIUser(t)
	r = bob.run("register", "--server", srv.Addr, "--name", "bob", "--fingerprint", srv.Fingerprint, "--invite", token)
	checkFailure(t, r, 1, "used up", "new one")

	out, _, code := qbackupd(t, "invite", "ls", "--data", srv.Dir)
	if code != 0 || !strings.Contains(out, "used up") || !strings.Contains(out, "alice's laptop") || strings.Contains(out, token) {
		t.Fatalf("invite ls: exit %d\n%s", code, out)
	}

	second, _, _ := qbackupd(t, "invite", "new", "--data", srv.Dir, "--uses", "2")
	second = strings.TrimSpace(second)
	book, err := store.OpenInvites(t.Context(), srv.Dir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := book.List(t.Context())
	book.Close()
	if err != nil || len(list) != 2 {
		t.Fatalf("invites: %v, %v", list, err)
	}
	t.Setenv("QBACKUP_INVITE", second+"\n") // as pasted, with a newline
	bob.ok("register", "--server", srv.Addr, "--name", "bob", "--fingerprint", srv.Fingerprint)

	if _, _, code := qbackupd(t, "invite", "rm", "--data", srv.Dir, list[1].ID); code != 0 {
		t.Fatal("invite rm failed")
	}
	if _, errOut, code := qbackupd(t, "invite", "rm", "--data", srv.Dir, list[1].ID); code != 1 || !strings.Contains(errOut, "invite ls") {
		t.Fatalf("second rm: exit %d, %q", code, errOut)
	}
	carol := newCLIUser(t)
	r = carol.run("register", "--server", srv.Addr, "--name", "carol", "--fingerprint", srv.Fingerprint)
	checkFailure(t, r, 1, "revoked")

	// The tokens are in no file of the client or the server.
	for _, dir := range []string{alice.home, bob.home, srv.Dir} {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, tok := range []string{token, second} {
				if bytes.Contains(b, []byte(tok[len(store.InvitePrefix):])) {
					t.Errorf("%s holds an invite token", path)
				}
			}
			return nil
		})
	}
}

func TestCLIInviteErrors(t *testing.T) {
	_, errOut, code := qbackupd(t, "invite", "--data", t.TempDir())
	if code != 1 || !strings.Contains(errOut, "start qbackupd") {
		t.Fatalf("invite in an empty dir: exit %d, %q", code, errOut)
	}
	_, errOut, code = qbackupd(t, "--data", t.TempDir(), "--registration", "sometimes")
	if code == 0 || !strings.Contains(errOut, "registration") {
		t.Fatalf("bad --registration: exit %d, %q", code, errOut)
	}
}

// newInvite makes an invite for one registration with qbackupd invite.
func newInvite(t *testing.T, srv *srvtest.Server) string {
	t.Helper()
	out, _, code := qbackupd(t, "invite", "--data", srv.Dir, "--uses", "1")
	token := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(token, store.InvitePrefix) {
		t.Fatalf("qbackupd invite: exit %d, token %q", code, token)
	}
	return token
}

// TestCLISendInvite: send --server --name registers first when the home
// holds no identity, so on a server that registers only by invite it takes
// the invite too, by flag or by environment variable; without one it says
// where the invite goes, and the token is never printed.
func TestCLISendInvite(t *testing.T) {
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = store.AdmitInvited })
	src := filepath.Join(t.TempDir(), "notes.txt")
	data := writeRandom(t, src, 10000, 1)

	alice := newCLIUser(t)
	r := alice.run("send", "--server", srv.Addr, "--name", "alice", src)
	checkFailure(t, r, 1, "only with an invite", "--invite", "QBACKUP_INVITE")
	if files := homeFiles(t, alice.home); len(files) != 1 || files[0] != sendLockFile {
		t.Errorf("a refused send left %v in the home, want only its %s", files, sendLockFile)
	}

	var printed []string // what the runs given a token printed
	token := newInvite(t, srv)
	r = alice.ok("send", "--server", srv.Addr, "--name", "alice", "--invite", token, src)
	printed = append(printed, r.stdout, r.stderr)
	if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 1}) {
		t.Errorf("send --invite: %+v, want 1 sent", got)
	}
	if !strings.Contains(r.stderr, `registered as "alice"`) {
		t.Errorf("stderr %q does not say it registered first", r.stderr)
	}
	out := filepath.Join(t.TempDir(), "out")
	alice.ok("restore", "notes.txt", "-o", out)
	assertSameFile(t, out, data)
	// Registered now: the used-up invite is no longer looked at.
	alice.ok("send", "--server", srv.Addr, "--name", "alice", "--invite", token, src)

	// By environment variable, as pasted, with a newline.
	second := newInvite(t, srv)
	t.Setenv("QBACKUP_INVITE", second+"\n")
	bob := newCLIUser(t)
	r = bob.ok("send", "--server", srv.Addr, "--name", "bob", src)
	printed = append(printed, r.stdout, r.stderr)
	if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 1}) {
		t.Errorf("send with QBACKUP_INVITE: %+v, want 1 sent", got)
	}
	if id, err := loadIdentity(bob.home); err != nil || id.Name != "bob" {
		t.Errorf("identity after send with QBACKUP_INVITE: %+v, %v", id, err)
	}

	// A used-up invite: the server's advice, not the client's.
	carol := newCLIUser(t)
	r = carol.run("send", "--server", srv.Addr, "--name", "carol", "--invite", token, src)
	printed = append(printed, r.stdout, r.stderr)
	if msg := checkFailure(t, r, 1, "used up", "new one"); strings.Contains(msg, "QBACKUP_INVITE") {
		t.Errorf("error %q for a bad invite tells where an invite goes, as if none was given", msg)
	}

	help := runMain(t, testContext(t), nil, "send", "--help")
	if !strings.Contains(help.stdout, "--invite=TOKEN") || !strings.Contains(help.stdout, "$QBACKUP_INVITE") {
		t.Errorf("send --help does not show --invite and QBACKUP_INVITE:\n%s", help.stdout)
	}

	for _, tok := range []string{token, second} {
		for _, s := range printed {
			if strings.Contains(s, tok[len(store.InvitePrefix):]) {
				t.Errorf("send printed an invite token:\n%s", s)
			}
		}
	}
}
