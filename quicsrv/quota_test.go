package quicsrv_test

// Quotas and unfinished uploads of one name (issue 15): a client has at
// most one unfinished upload per name, so what it can hold in unfinished
// uploads is bounded by its quotas like what it stores.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

// answers collects what the server sends on one session, by request and
// by transfer, for tests whose answers interleave.
type answers struct {
	c       *rawClient
	ready   map[uint32]*proto.UploadReady    // by req
	errs    map[uint32]*proto.ErrorMessage   // by req
	sums    map[uint32]*proto.UploadChecksum // by xfer
	results map[uint32]*proto.UploadResult   // by xfer
}

func newAnswers(c *rawClient) *answers {
	return &answers{
		c:       c,
		ready:   make(map[uint32]*proto.UploadReady),
		errs:    make(map[uint32]*proto.ErrorMessage),
		sums:    make(map[uint32]*proto.UploadChecksum),
		results: make(map[uint32]*proto.UploadResult),
	}
}

// until reads messages until done reports true.
func (a *answers) until(what string, done func() bool) {
	a.c.t.Helper()
	for !done() {
		m, err := a.c.read()
		if err != nil {
			a.c.t.Fatalf("waiting for %s: %v", what, err)
		}
		switch m := m.(type) {
		case *proto.UploadReady:
			a.ready[m.Req] = m
		case *proto.ErrorMessage:
			a.errs[m.Req] = m
		case *proto.UploadChecksum:
			a.sums[m.Xfer] = m
		case *proto.UploadResult:
			a.results[m.Xfer] = m
		default:
			a.c.t.Fatalf("unexpected %v %+v while waiting for %s", m.Type(), m, what)
		}
	}
}

// answered waits for the answer to request req: UploadReady or Error.
func (a *answers) answered(req uint32) (*proto.UploadReady, *proto.ErrorMessage) {
	a.c.t.Helper()
	a.until(fmt.Sprintf("the answer to request %d", req), func() bool { return a.ready[req] != nil || a.errs[req] != nil })
	return a.ready[req], a.errs[req]
}

// sendMissing sends the ranges r asks for, from data.
func (a *answers) sendMissing(r *proto.UploadReady, data []byte) {
	a.c.t.Helper()
	for _, mr := range r.Missing {
		a.c.sendData(framesAt(a.c, r.Xfer, r.UploadID, data, int(mr.Off), int(mr.Off+mr.Len), int(a.c.welcome.ChunkSize))...)
	}
}

// usage returns what the client stores plus its unfinished uploads.
func usage(t *testing.T, srv *srvtest.Server, id [16]byte) (stored int64, files int, pending int64, pendingN int) {
	t.Helper()
	ctx := context.Background()
	stored, files, err := srv.Store.Usage(ctx, store.ClientID(id))
	if err != nil {
		t.Fatal(err)
	}
	pending, pendingN, err = srv.Store.Pending(ctx, store.ClientID(id), "")
	if err != nil {
		t.Fatal(err)
	}
	return stored, files, pending, pendingN
}

// TestQuotaSameName is issue 15's scenario: with quotas of 1 MiB and 5
// files, six requests for one 1 MiB name in one session, each sent in full
// and checksummed but none committed, then a commit of every one. Each
// request takes over the upload of the one before it (Error 0xc to that
// request), resuming it if it is of the same size and modification time,
// so one upload is left, one version is stored, and the quotas hold. (The
// server gave each request an upload of its own and stored all six: 6 MiB.)
func TestQuotaSameName(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name      string
		sameMtime bool // every request has the same size and modification time
	}{
		{"the file changes between requests", false},
		{"same size and modification time", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := srvtest.Start(t, func(s *quicsrv.Server) { s.QuotaBytes = mib; s.QuotaFiles = 5 })
			key, _ := testKeys(t)
			c := registered(t, srv, "limited", key)
			a := newAnswers(c)
			var reqs []*proto.UploadRequest
			var readies []*proto.UploadReady
			for i := range 6 {
				data := seededBytes(byte(i), mib)
				m := c.uploadReq("same", data)
				if !tt.sameMtime {
					m.ModTime += int64(i)
				}
				c.send(m)
				r, em := a.answered(m.Req)
				if em != nil {
					t.Fatalf("request %d: %v", i+1, em.Err())
				}
				if i > 0 {
					prev := reqs[i-1]
					em := a.errs[prev.Req]
					if em == nil || em.Code != proto.CodeAborted || !strings.Contains(em.Message, "took over") {
						t.Errorf("request %d answered; request %d got %+v, want an Error %v saying it was taken over", i+1, i, em, proto.CodeAborted)
					}
					want := readies[i-1].UploadID // the earlier upload, resumed
					if !tt.sameMtime {
						want = r.UploadID
					}
					if r.UploadID != want || r.UploadID == ([16]byte{}) {
						t.Errorf("request %d got upload %x, want %x", i+1, r.UploadID, want)
					}
				}
				reqs, readies = append(reqs, m), append(readies, r)
				a.sendMissing(r, data)
				a.until("the checksum", func() bool { return a.sums[r.Xfer] != nil })
				if _, _, _, n := usage(t, srv, c.id); n != 1 {
					t.Errorf("after request %d the client has %d unfinished uploads, want 1", i+1, n)
				}
			}
			for _, r := range readies {
				c.send(&proto.UploadCommit{Xfer: r.Xfer})
			}
			a.until("every commit's result or takeover", func() bool {
				for i, r := range readies {
					if a.results[r.Xfer] == nil && a.errs[reqs[i].Req] == nil {
						return false
					}
				}
				return true
			})
			last := readies[len(readies)-1]
			if res := a.results[last.Xfer]; res.Status != proto.ResultStored || res.Version != 1 {
				t.Errorf("last upload: %+v, want stored as version 1", res)
			}
			for _, r := range readies[:len(readies)-1] {
				if res := a.results[r.Xfer]; res != nil {
					t.Errorf("the commit of taken-over transfer %d was answered %+v", r.Xfer, res)
				}
			}
			stored, files, pending, pendingN := usage(t, srv, c.id)
			if stored > mib || files > 5 || pending != 0 || pendingN != 0 {
				t.Errorf("the client stores %d bytes in %d versions, with %d bytes in %d unfinished uploads; quotas %d bytes, 5 files",
					stored, files, pending, pendingN, mib)
			}
			// The storage quota is full now.
			m := c.uploadReq("other", []byte{1})
			c.send(m)
			if _, em := a.answered(m.Req); em == nil || em.Code != proto.CodeLimit {
				t.Errorf("a request with the quota full got %+v, want Error %v", em, proto.CodeLimit)
			}
			c.close()
			tmpEmpty(t, srv)
		})
	}
}

// TestQuotaSameNameTwoSessions: two sessions of one client ask for the
// same names at the same moment, send everything and commit. Requests for
// one name are handled one at a time, the later taking over the earlier's
// upload, so each name gets one version and the quotas hold. (Requests
// that raced were each checked without the other and both stored.)
func TestQuotaSameNameTwoSessions(t *testing.T) {
	const (
		names = 8
		size  = 16 << 10
	)
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.QuotaBytes = names * size
		s.QuotaFiles = names
		s.ChunkSize = 4 << 10
	})
	key, _ := testKeys(t)
	var sessions [2]*rawClient
	var ans [2]*answers
	for i := range sessions {
		sessions[i] = registered(t, srv, "limited", key)
		ans[i] = newAnswers(sessions[i])
	}
	type sent struct {
		m    *proto.UploadRequest
		data []byte
	}
	var all [2][]sent
	for n := range names {
		for i, c := range sessions {
			data := seededBytes(byte(10*n+i), size)
			all[i] = append(all[i], sent{c.uploadReq(fmt.Sprintf("dir/f%d", n), data), data})
		}
	}
	// Both sessions send all their requests at the same moment.
	var wg sync.WaitGroup
	for i, c := range sessions {
		var ms []proto.Message
		for _, s := range all[i] {
			ms = append(ms, s.m)
		}
		wg.Go(func() { c.send(ms...) })
	}
	wg.Wait()
	// Answers, data and checksums; then commits.
	for i := range sessions {
		for _, s := range all[i] {
			if r, em := ans[i].answered(s.m.Req); em == nil {
				ans[i].sendMissing(r, s.data)
			} else if em.Code != proto.CodeAborted {
				t.Errorf("session %d, %q: %v", i+1, s.m.Name, em.Err())
			}
		}
	}
	for i := range sessions {
		for _, s := range all[i] {
			r := ans[i].ready[s.m.Req]
			if r == nil {
				continue
			}
			ans[i].until("a checksum or a takeover", func() bool { return ans[i].sums[r.Xfer] != nil || ans[i].errs[s.m.Req] != nil })
			sessions[i].send(&proto.UploadCommit{Xfer: r.Xfer})
		}
	}
	stored := 0
	for i, c := range sessions {
		for _, s := range all[i] {
			r := ans[i].ready[s.m.Req]
			if r == nil {
				continue
			}
			ans[i].until("the commit's result or a takeover", func() bool { return ans[i].results[r.Xfer] != nil || ans[i].errs[s.m.Req] != nil })
			if res := ans[i].results[r.Xfer]; res != nil {
				stored++
				if res.Status != proto.ResultStored || res.Version != 1 {
					t.Errorf("session %d, %q: %+v; want stored as version 1", i+1, s.m.Name, res)
				}
			}
		}
		c.close()
	}
	bytes, files, pending, pendingN := usage(t, srv, sessions[0].id)
	t.Logf("stored %d versions, %d bytes; %d unfinished uploads", files, bytes, pendingN)
	if stored != names || files != names || bytes != names*size || pendingN != 0 || pending != 0 {
		t.Errorf("%d commits stored %d versions (%d bytes), %d unfinished uploads left; want one version of each of %d names",
			stored, files, bytes, pendingN, names)
	}
}

// TestQuotaResumeAtEdge: with the quotas filled exactly by an unfinished
// upload, a request for the same file resumes it, wherever it is: kept for
// resume, still open in another session of the client, or open in the
// requesting session itself. It is counted once, and the file is stored.
func TestQuotaResumeAtEdge(t *testing.T) {
	const size = 40 << 10
	tests := []struct {
		name  string
		where string // "parked", "other session", "same session"
	}{
		{"kept for resume", "parked"},
		{"open in another session", "other session"},
		{"open in the same session", "same session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := srvtest.Start(t, func(s *quicsrv.Server) {
				s.QuotaBytes = size
				s.QuotaFiles = 1
				s.ChunkSize = 4 << 10
			})
			key, _ := testKeys(t)
			data := seededBytes(7, size)
			first := registered(t, srv, "limited", key)
			fa := newAnswers(first)
			r := first.startUpload("edge", data)
			first.sendData(first.chunkFrames(r.Xfer, r.UploadID, data[:size/2], int(first.welcome.ChunkSize))...)
			waitFor(t, "the first half to be written", func() bool { return quicsrv.WrittenBytes(srv.Srv) == size/2 })
			c, a := first, fa
			switch tt.where {
			case "parked":
				first.close()
				waitFor(t, "the upload to be kept", func() bool { return quicsrv.ActiveUploads(srv.Srv) == 0 })
				fallthrough
			case "other session":
				c = registered(t, srv, "limited", key)
				a = newAnswers(c)
			}
			m := c.uploadReq("edge", data)
			c.send(m)
			ready, em := a.answered(m.Req)
			if em != nil {
				t.Fatalf("request at the quota's edge: %v", em.Err())
			}
			want := []proto.Range{{Off: size / 2, Len: size / 2}}
			if ready.UploadID != r.UploadID || !slices.Equal(ready.Missing, want) {
				t.Fatalf("request got upload %x missing %v; want %x missing %v", ready.UploadID, ready.Missing, r.UploadID, want)
			}
			if tt.where != "parked" {
				fa.until("the takeover", func() bool { return fa.errs[r.Req] != nil })
				if em := fa.errs[r.Req]; em.Code != proto.CodeAborted {
					t.Errorf("the first request got %v, want %v", em.Err(), proto.CodeAborted)
				}
			}
			a.sendMissing(ready, data)
			if res := c.finishUpload(ready.Xfer, data); res.Status != proto.ResultStored {
				t.Fatalf("resumed upload: %+v", res)
			}
			if stored, files, _, n := usage(t, srv, c.id); stored != size || files != 1 || n != 0 {
				t.Errorf("stored %d bytes in %d versions, %d unfinished uploads; want %d, 1, 0", stored, files, n, size)
			}
			c.close()
			first.close()
			tmpEmpty(t, srv)
		})
	}
}

// TestQuotaCommitUnderWay: a request for a file whose commit is under
// way waits for that commit, and counts what it stored. (The check left
// the file's uploads out, and read the usage before the commit ended, so
// with the quota full both were stored.)
func TestQuotaCommitUnderWay(t *testing.T) {
	const size = 256 << 10
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.QuotaBytes = size; s.ChunkSize = 64 << 10 })
	key, _ := testKeys(t)
	c := registered(t, srv, "limited", key)
	a := newAnswers(c)
	data := seededBytes(1, size)
	r := c.startUpload("f", data)
	a.sendMissing(r, data)
	a.until("the checksum", func() bool { return a.sums[r.Xfer] != nil })
	changed := seededBytes(2, size)
	m := c.uploadReq("f", changed)
	m.ModTime++
	c.send(&proto.UploadCommit{Xfer: r.Xfer}, m) // one write: the commit is taken first
	a.until("the commit's result", func() bool { return a.results[r.Xfer] != nil })
	if res := a.results[r.Xfer]; res.Status != proto.ResultStored {
		t.Fatalf("commit: %+v", res)
	}
	_, em := a.answered(m.Req)
	if em == nil || em.Code != proto.CodeLimit || !strings.Contains(em.Message, "256 KiB stored") {
		t.Fatalf("request during the commit got %+v, want Error %v counting the stored version", em, proto.CodeLimit)
	}
	if stored, files, _, n := usage(t, srv, c.id); stored != size || files != 1 || n != 0 {
		t.Errorf("stored %d bytes in %d versions, %d unfinished uploads; want %d, 1, 0", stored, files, n, size)
	}
}

// TestSameNameRequestsInOrder: a session that sends two requests for each
// of several names at once sees each pair handled in the order sent: the
// first is answered, then taken over by the second (Error 0xc), which
// keeps the one upload of the name. (Handled at once, the two could both
// open an upload, or the older take over the newer.)
func TestSameNameRequestsInOrder(t *testing.T) {
	const names = 16
	srv := srvtest.Start(t, nil)
	key, _ := testKeys(t)
	c := registered(t, srv, "ordered", key)
	a := newAnswers(c)
	data := seededBytes(1, 1000)
	var first, second []*proto.UploadRequest
	var ms []proto.Message
	for n := range names {
		m1, m2 := c.uploadReq(fmt.Sprintf("f%d", n), data), c.uploadReq(fmt.Sprintf("f%d", n), data)
		m2.ModTime++ // a changed file: the second does not resume the first
		first, second = append(first, m1), append(second, m2)
		ms = append(ms, m1, m2)
	}
	c.send(ms...)
	for n := range names {
		r1, r2 := first[n].Req, second[n].Req
		a.until("both answers and the takeover", func() bool { return a.ready[r2] != nil || a.errs[r2] != nil })
		if a.ready[r1] == nil || a.errs[r1] == nil || a.errs[r1].Code != proto.CodeAborted || a.ready[r2] == nil || a.errs[r2] != nil {
			t.Errorf("%q: the first request got %+v then %+v, the second %+v and %+v; want the first answered and taken over (Error %v), the second answered",
				first[n].Name, a.ready[r1], a.errs[r1], a.ready[r2], a.errs[r2], proto.CodeAborted)
		}
	}
	if _, _, _, n := usage(t, srv, c.id); n != names {
		t.Errorf("%d unfinished uploads, want one for each of %d names", n, names)
	}
}
