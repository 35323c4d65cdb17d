package quiccli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCLIMessagesInUsersWords: failures a user can cause on the client,
// each ending in one clean line (checkFailure: no Go package prefix such
// as "x509:" or "store:", no Go type name) that says what to do.
func TestCLIMessagesInUsersWords(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := testContext(t)
	writeKey := func(t *testing.T, home string, der []byte) {
		b := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(filepath.Join(home, keyFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range []struct {
		name  string
		setup func(t *testing.T, home string) string // breaks a registered home; returns the --home to give
		args  []string
		want  []string
	}{
		{"key of another kind", func(t *testing.T, home string) string {
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.MarshalPKCS8PrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			writeKey(t, home, der)
			return home
		}, []string{"ls"}, []string{keyFile, "not an RSA key", "from a copy"}},
		{"damaged key", func(t *testing.T, home string) string {
			writeKey(t, home, []byte("not DER at all"))
			return home
		}, []string{"ls"}, []string{keyFile, "damaged", "from a copy"}},
		{"home is a file", func(t *testing.T, home string) string {
			f := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return f
		}, []string{"ls"}, []string{"not a directory", "--home"}},
		{"name with a slash", nil, []string{"register", "--server", srv.Addr, "--name", "a/b"}, []string{`"a/b"`, "'/'", "another --name"}},
		{"name with a control character", nil, []string{"register", "--server", srv.Addr, "--name", "a\x01b"}, []string{"U+0001", "another --name"}},
		{"name too long", nil, []string{"register", "--server", srv.Addr, "--name", strings.Repeat("n", 65)}, []string{"65 bytes", "64", "another --name"}},
		{"send with a bad name", nil, []string{"send", "--server", srv.Addr, "--name", "a/b", "/dev/null"}, []string{"'/'", "another --name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := newCLIUser(t)
			home := u.home
			if tc.setup != nil {
				u.register(srv, "u"+strconv.Itoa(i))
				home = tc.setup(t, u.home)
			}
			r := runMain(t, ctx, nil, append([]string{"--home", home, "--key-bits", "2048"}, tc.args...)...)
			checkFailure(t, r, 1, tc.want...)
			if tc.setup == nil && strings.Contains(r.stderr, "generating") {
				t.Errorf("a key was made for a name no server accepts:\n%s", r.stderr)
			}
		})
	}
}

// TestCheckClientName: the rules of PROTOCOL.md §12.2, checked before a
// key is made. (Invalid UTF-8 cannot come through Main: kong turns it
// into U+FFFD, which is printable.)
func TestCheckClientName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // in the error; "" for none
	}{
		{"laptop", ""},
		{"Ünïcødé laptop #2", ""},
		{strings.Repeat("n", 64), ""},
		{strings.Repeat("é", 32), ""},
		{strings.Repeat("n", 65), "65 bytes"},
		{"a/b", "'/'"},
		{"a\x01b", "U+0001"},
		{"a\tb", "U+0009"},
		{"a\xffb", "UTF-8"},
	} {
		err := checkClientName(tc.name)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("checkClientName(%q) = %v, want nil", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "another --name")):
			t.Errorf("checkClientName(%q) = %v, want an error mentioning %q and another --name", tc.name, err, tc.want)
		}
	}
}
