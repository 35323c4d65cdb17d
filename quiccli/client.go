// Package quiccli is the qbackup client: it registers with a server, opens
// authenticated sessions, sends files as encrypted chunks over parallel
// QUIC streams, lists and restores them. Main is the command line that
// cmd/qbackup runs; Client is the library under it.
package quiccli

import (
	"cmp"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// Client holds what every command needs: where the identity lives and where
// to write.
type Client struct {
	Home    string    // identity directory
	Out     io.Writer // results
	Err     io.Writer // warnings and notices
	KeyBits int       // RSA key size for a new identity (0: 3072)
	Streams int       // data streams per session (0: what the server offers)
	// Stall is how long a session's network path may stay silent before
	// the session moves to a new socket or, failing that, ends so that
	// send reconnects and resumes (0: DefaultStall; negative: never, and
	// only the 60 s idle timeout ends a dead connection).
	Stall time.Duration
	// Invite is the invite token Connect registers with when the home
	// holds no identity yet (send --server --name), for a server that
	// registers new clients only by invite. It is never saved.
	Invite string
	// Congestion is the congestion controller of the client's
	// connections ("": quic.BBR).
	Congestion quic.Congestion
	// SendLimit caps the rate of sends, over all connections together
	// (send --limit); nil or a zero rate: no limit.
	SendLimit *quic.RateLimit
	// RestoreLimit asks the server to send restores at most this many
	// bytes per second (restore --limit); 0: no limit.
	RestoreLimit uint64

	dialHook func(*dialOptions) // tests adjust the dial here
}

// DefaultHome is $XDG_CONFIG_HOME/qbackup, or ~/.config/qbackup. A
// relative XDG_CONFIG_HOME is ignored, as the XDG base directory
// specification says. With neither it fails, rather than keep a key in
// whatever directory the command happens to run in.
func DefaultHome() (string, error) {
	if d := os.Getenv("XDG_CONFIG_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "qbackup"), nil
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "qbackup"), nil
	}
	return "", errors.New("neither HOME nor an absolute XDG_CONFIG_HOME is set, so there is no default place for this client's identity and key: give --home DIR or set QBACKUP_HOME")
}

func (c *Client) notice(format string, args ...any) {
	if c.Err != nil {
		fmt.Fprintf(c.Err, format+"\n", args...)
	}
}

func (c *Client) options(server, pin string, onFirstUse func(string) error) dialOptions {
	o := dialOptions{Server: server, Fingerprint: pin, OnFirstUse: onFirstUse, Streams: c.Streams,
		Stall: cmp.Or(c.Stall, DefaultStall), Notice: c.notice,
		Congestion: c.Congestion, Limit: c.SendLimit, Pace: c.RestoreLimit}
	if c.dialHook != nil {
		c.dialHook(&o)
	}
	return o
}

// RegisterOptions are the optional parts of a registration.
type RegisterOptions struct {
	// Fingerprint pins the server certificate's SHA-256 (hex) instead of
	// trusting it on first use.
	Fingerprint string
	// Invite is an invite token from the server's operator, needed by a
	// server that registers new clients only by invite.
	Invite string
}

// Register registers name with the server (or confirms an earlier
// registration of the same name with the same key) and saves the identity.
// An empty opt.Fingerprint trusts the first certificate seen, or keeps the
// one pinned for this server before.
func (c *Client) Register(ctx context.Context, server, name string, opt RegisterOptions) (*Identity, error) {
	fingerprint := opt.Fingerprint
	if name == "" || server == "" {
		return nil, errors.New("register needs --server HOST:PORT and --name NAME")
	}
	if err := checkClientName(name); err != nil {
		return nil, err
	}
	pin := ""
	if fingerprint != "" {
		fp, err := certs.ParseFingerprint(fingerprint)
		if err != nil {
			return nil, fmt.Errorf("--fingerprint %q is not a SHA-256 fingerprint: give the 64 hex digits qbackupd logs at start", fingerprint)
		}
		pin = fp
	}
	old, err := loadIdentity(c.Home)
	if err != nil && !errors.Is(err, errNoIdentity) {
		return nil, err
	}
	pinnedBefore := false
	if old != nil && pin == "" && old.Server == server {
		pin = old.Fingerprint
		pinnedBefore = pin != ""
	}
	bits := c.KeyBits
	if bits == 0 {
		bits = proto.DefaultRSABits
	}
	// A new key is saved as client_key.pem only once the server has
	// registered it, so a refused registration (bad invite, name taken, no
	// server) leaves no key behind that no server knows. But it cannot
	// live only in memory until then: the server may register it and its
	// answer be lost (the link fails, the user presses Ctrl-C, the client
	// dies), and a new key would then find the name taken by a key nobody
	// has, and the invite used up. So just before the Register message
	// goes out, the key is written as client_key.pending.pem; a refusal
	// removes it; any other outcome keeps it, and the next registration
	// reuses it: the server registers the same name with the same key
	// again as a no-op, without an invite, and answers with the same
	// client ID. Once registered, the pending key is renamed to
	// client_key.pem, and only then is the identity written, so an
	// identity never exists without its key; a crash between the two
	// leaves a key, which the next registration reuses as before.
	key, err := registrationKey(c.Home, bits, c.notice)
	if err != nil {
		return nil, err
	}
	pub, err := publicKeyDER(key.priv)
	if err != nil {
		return nil, err
	}
	var trusted string
	o := c.options(server, pin, func(fp string) error { trusted = fp; return nil })
	s, err := dial(ctx, o, key.priv, func(ekm []byte) (proto.Message, error) {
		if err := key.savePending(c.Home); err != nil {
			return nil, err
		}
		sig, err := proto.SignProof(key.priv, proto.RegisterDigest(ekm, name, pub))
		if err != nil {
			return nil, err
		}
		return &proto.Register{Version: proto.Version, Name: name, PublicKey: pub, Signature: sig, Invite: opt.Invite}, nil
	})
	if refused(err) {
		key.forget(c.Home)
	}
	var cc *CertChangedError
	if errors.As(err, &cc) && !pinnedBefore {
		return nil, &wrongPinError{cc}
	}
	if err != nil {
		return nil, registerError(server, name, opt.Invite, err)
	}
	defer s.Close()
	if trusted != "" {
		c.notice("trusting the certificate of %s on first use: sha256 %s", server, trusted)
		pin = trusted
	}
	if err := key.keep(c.Home); err != nil {
		return nil, fmt.Errorf("registered, but saving the key in %s failed (%v): make room or fix the permissions there, and register again", c.Home, err)
	}
	id := &Identity{Server: server, Name: name, ClientID: fmt.Sprintf("%x", s.ClientID), Fingerprint: pin}
	if err := id.save(c.Home); err != nil {
		return nil, fmt.Errorf("registered, but saving the identity in %s failed (%v): make room or fix the permissions there, and register again", c.Home, err)
	}
	return id, nil
}

// refused reports whether the server refused a registration before
// registering anyone (the answers it gives before its store commits), so
// that the key sent is not registered under that name. A connection that
// fails before the Register message goes out is not a refusal, but then
// no pending key was written either.
func refused(err error) bool {
	var pe *proto.Error
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case proto.CodeRegistrationClosed, proto.CodeNameTaken, proto.CodeInvalidName,
		proto.CodeBadKey, proto.CodeBadProof, proto.CodeVersion:
		return true
	}
	return false
}

// checkClientName checks a non-empty name against the rules for client
// names (PROTOCOL.md §12.2), so that a name no server accepts is refused
// before a key is made, in words that say what to change rather than in
// the server's (a name too long does not even decode there).
func checkClientName(name string) error {
	var why string
	switch {
	case len(name) > proto.MaxClientNameLen:
		why = fmt.Sprintf("it is %d bytes long, over the limit of %d", len(name), proto.MaxClientNameLen)
	case !utf8.ValidString(name):
		why = "it is not valid UTF-8"
	case strings.ContainsRune(name, '/'):
		why = "it contains '/'"
	default:
		for _, r := range name {
			if !unicode.IsPrint(r) {
				why = fmt.Sprintf("it contains the unprintable character %U", r)
				break
			}
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%q cannot be a client name, as %s: choose another --name", name, why)
}

// wrongPinError is a CertChangedError on a first registration: nothing was
// pinned before, the --fingerprint given is wrong.
type wrongPinError struct{ *CertChangedError }

func (e *wrongPinError) Error() string {
	return fmt.Sprintf("%s presented a certificate with sha256 %s, not the --fingerprint %s you gave: check the fingerprint qbackupd logged at start, and do not proceed if they differ", e.Server, e.Presented, e.Pinned)
}

func (e *wrongPinError) Unwrap() error { return e.CertChangedError }

// registerError words a refused registration for the user. invite is the
// token given, if any: a server that admits only by invite says so, but
// only the client knows that the token can also come from QBACKUP_INVITE,
// and that send takes --invite too.
func registerError(server, name, invite string, err error) error {
	var pe *proto.Error
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case proto.CodeNameTaken:
		return fmt.Errorf("the name %q is already registered on %s by another client; choose another --name", name, server)
	case proto.CodeRegistrationClosed:
		if invite == "" {
			return fmt.Errorf("%s did not register %q: %s (an invite goes in --invite TOKEN or QBACKUP_INVITE)", server, name, pe.Message)
		}
		return fmt.Errorf("%s did not register %q: %s", server, name, pe.Message)
	}
	return fmt.Errorf("registration refused by %s: %s", server, pe.Message)
}

// Connect opens a session as the saved identity. If there is none and
// server and name are given, it registers first. A server or name that
// differs from the saved identity's is an error.
func (c *Client) Connect(ctx context.Context, server, name string) (*Session, *Identity, error) {
	id, err := loadIdentity(c.Home)
	if errors.Is(err, errNoIdentity) {
		if server == "" || name == "" {
			return nil, nil, fmt.Errorf("no identity in %s: run qbackup register --server HOST:PORT --name NAME first (or give send --server and --name)", c.Home)
		}
		if id, err = c.Register(ctx, server, name, RegisterOptions{Invite: c.Invite}); err != nil {
			return nil, nil, err
		}
		c.notice("registered as %q (client ID %s)", id.Name, id.ClientID)
	} else if err != nil {
		return nil, nil, err
	}
	if server != "" && server != id.Server {
		return nil, nil, fmt.Errorf("%s holds the identity for %s, not %s: use --home for a second identity", c.Home, id.Server, server)
	}
	if name != "" && name != id.Name {
		return nil, nil, fmt.Errorf("%s holds the identity %q, not %q: use --home for a second identity", c.Home, id.Name, name)
	}
	priv, err := loadKey(filepath.Join(c.Home, keyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("the private key %s is missing; without it this identity cannot reconnect: restore the key from a copy, or register again under another name", filepath.Join(c.Home, keyFile))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cannot load the private key: %v", err)
	}
	s, err := c.reconnect(ctx, id, priv)
	if err != nil {
		return nil, nil, err
	}
	return s, id, nil
}

func (c *Client) reconnect(ctx context.Context, id *Identity, priv *rsa.PrivateKey) (*Session, error) {
	cid, err := id.ID()
	if err != nil {
		return nil, err
	}
	if id.Fingerprint == "" {
		return nil, fmt.Errorf("the identity in %s pins no server certificate; run qbackup register again", c.Home)
	}
	o := c.options(id.Server, id.Fingerprint, nil)
	s, err := dial(ctx, o, priv, func(ekm []byte) (proto.Message, error) {
		sig, err := proto.SignProof(priv, proto.ReconnectDigest(ekm, cid))
		if err != nil {
			return nil, err
		}
		return &proto.Reconnect{Version: proto.Version, ClientID: cid, Signature: sig}, nil
	})
	var pe *proto.Error
	if errors.As(err, &pe) {
		switch pe.Code {
		case proto.CodeUnknownClient:
			return nil, &permanentError{fmt.Errorf("reconnect rejected: %s does not know client %s (%q). It may have lost its data, or it is another server. To start afresh there: qbackup register --server %s --name %s", id.Server, id.ClientID, id.Name, id.Server, id.Name)}
		case proto.CodeBadProof:
			return nil, &permanentError{fmt.Errorf("reconnect rejected: %s does not accept this client's key as the key of %q; the key in %s is not the one registered", id.Server, id.Name, c.Home)}
		case proto.CodeShutdown, proto.CodeInternal, proto.CodeLimit:
			return nil, fmt.Errorf("the server refused the session for now: %s", pe.Message)
		}
		return nil, &permanentError{fmt.Errorf("the server refused the session: %s", pe.Message)}
	}
	return s, err
}
