package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// An invite token is InvitePrefix followed by 32 base32 characters: 160
// random bits, so guessing one is hopeless. The store keeps only its
// SHA-256, so a copy of the database does not let anyone in.
const InvitePrefix = "qbi1-"

// MaxInviteLen bounds the invite token a client may send.
const MaxInviteLen = 128

var inviteEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Invite describes an invite token without the token itself.
type Invite struct {
	ID      string // public name, safe to show and log
	Created time.Time
	Expires time.Time
	Uses    int // registrations it still admits
	Note    string
}

func inviteHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// useInvite consumes one use of the invite token within tx and returns the
// invite's ID, or ErrBadInvite.
func useInvite(ctx context.Context, tx *sql.Tx, token string, now time.Time) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: none given", ErrBadInvite)
	}
	h := inviteHash(token)
	var id string
	err := tx.QueryRowContext(ctx,
		"UPDATE invites SET uses = uses - 1 WHERE hash = ? AND uses > 0 AND expires > ? RETURNING id",
		h[:], now.UnixNano()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrBadInvite
	}
	if err != nil {
		return "", wrapDB("use invite", err)
	}
	return id, nil
}

// InviteBook manages a store's invites. It may be open while a Store (in
// this process or in a running qbackupd) has the same directory open:
// SQLite serialises the writes, and invites take no part in the Store's
// crash recovery.
type InviteBook struct {
	db *sql.DB
}

// OpenInvites opens the invites of the store in dir. The store must exist
// and have the current schema: a qbackupd of this version has opened it.
func OpenInvites(ctx context.Context, dir string) (*InviteBook, error) {
	_, db, err := openBeside(ctx, dir)
	if err != nil {
		return nil, err
	}
	return &InviteBook{db: db}, nil
}

// openBeside opens the database of the store in dir for use beside a
// Store that may have it open, in this process or another: without the
// Store's lock and its crash recovery. The store must exist and have the
// current schema. It returns the store's absolute directory too.
func openBeside(ctx context.Context, dir string) (string, *sql.DB, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, fmt.Errorf("store: %w", err)
	}
	path := filepath.Join(abs, dbName)
	if _, err := os.Stat(path); err != nil {
		return "", nil, fmt.Errorf("store: no qbackup database in %s (start qbackupd with --data %s once first): %w", abs, dir, err)
	}
	db, err := openDB(path)
	if err != nil {
		return "", nil, err
	}
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		db.Close()
		return "", nil, wrapDB("read schema version", err)
	}
	if v != schemaVersion {
		db.Close()
		return "", nil, fmt.Errorf("store: database schema version %d, this program needs %d: start this version of qbackupd once to upgrade it", v, schemaVersion)
	}
	return abs, db, nil
}

// Close closes the book.
func (b *InviteBook) Close() error { return b.db.Close() }

// Create makes an invite that admits uses registrations until ttl has
// passed, and returns its token, which is shown only this once.
func (b *InviteBook) Create(ctx context.Context, ttl time.Duration, uses int, note string) (string, Invite, error) {
	if ttl <= 0 {
		return "", Invite{}, fmt.Errorf("store: invite lifetime %v is not positive", ttl)
	}
	if uses <= 0 {
		return "", Invite{}, fmt.Errorf("store: invite uses %d is not positive", uses)
	}
	if len(note) > 1024 {
		return "", Invite{}, errors.New("store: invite note longer than 1024 bytes")
	}
	now := time.Now()
	for range 8 { // a short ID may collide; the token never does
		var raw [20]byte
		rand.Read(raw[:])
		token := InvitePrefix + strings.ToLower(inviteEncoding.EncodeToString(raw[:]))
		h := inviteHash(token)
		inv := Invite{
			ID:      hex.EncodeToString(h[:5]),
			Created: time.Unix(0, now.UnixNano()),
			Expires: time.Unix(0, now.Add(ttl).UnixNano()),
			Uses:    uses,
			Note:    note,
		}
		_, err := b.db.ExecContext(ctx,
			"INSERT INTO invites (id, hash, created, expires, uses, note) VALUES (?, ?, ?, ?, ?, ?)",
			inv.ID, h[:], inv.Created.UnixNano(), inv.Expires.UnixNano(), uses, note)
		if isConstraint(err) {
			continue
		}
		if err != nil {
			return "", Invite{}, wrapDB("insert invite", err)
		}
		return token, inv, nil
	}
	return "", Invite{}, errors.New("store: could not pick a fresh invite ID")
}

// List returns every invite, used up and expired ones too, oldest first.
func (b *InviteBook) List(ctx context.Context) ([]Invite, error) {
	rows, err := b.db.QueryContext(ctx, "SELECT id, created, expires, uses, note FROM invites ORDER BY created, id")
	if err != nil {
		return nil, wrapDB("list invites", err)
	}
	defer rows.Close()
	var out []Invite
	for rows.Next() {
		var inv Invite
		var created, expires int64
		if err := rows.Scan(&inv.ID, &created, &expires, &inv.Uses, &inv.Note); err != nil {
			return nil, wrapDB("list invites", err)
		}
		inv.Created, inv.Expires = time.Unix(0, created), time.Unix(0, expires)
		out = append(out, inv)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapDB("list invites", err)
	}
	return out, nil
}

// Revoke deletes the invite with the given ID; ErrNotFound if there is
// none. Clients it admitted stay registered.
func (b *InviteBook) Revoke(ctx context.Context, id string) error {
	res, err := b.db.ExecContext(ctx, "DELETE FROM invites WHERE id = ?", id)
	if err != nil {
		return wrapDB("revoke invite", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: no invite %q", ErrNotFound, id)
	}
	return nil
}

// isConstraint reports whether err is SQLite refusing a row for a
// constraint (here: a duplicate invite ID).
func isConstraint(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrConstraint
}
