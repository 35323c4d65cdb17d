package quicsrv_test

// Per-client limits: the largest file accepted and the quotas on stored
// bytes and file versions.

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

func TestUploadLimits(t *testing.T) {
	type file struct {
		name string
		data []byte
	}
	f := func(name string, seed byte, n int) file { return file{name, seededBytes(seed, n)} }
	tests := []struct {
		name      string
		configure func(*quicsrv.Server)
		stored    []file // stored first, all accepted
		inFlight  []file // then started but not finished
		parked    []file // then half sent on a connection that is closed
		req       file   // then requested
		wantCode  proto.ErrorCode
		wantMsg   string // in the Error's message
		unchanged bool   // req is answered ReadyUnchanged
	}{
		{
			name:      "over max file size",
			configure: func(s *quicsrv.Server) { s.MaxFileSize = 1000 },
			req:       f("big.bin", 1, 1001),
			wantCode:  proto.CodeTooLarge,
			wantMsg:   "file of 1001 bytes is over the server's limit of 1000 bytes",
		},
		{
			name:      "at max file size",
			configure: func(s *quicsrv.Server) { s.MaxFileSize = 1000 },
			req:       f("big.bin", 1, 1000),
		},
		{
			name:      "storage quota reached",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000 },
			stored:    []file{f("a", 1, 1000), f("a", 2, 1000), f("b", 3, 500)},
			req:       f("c", 4, 501),
			wantCode:  proto.CodeLimit,
			wantMsg:   "storage quota exceeded: 2.4 KiB stored + 501 B > 2.9 KiB",
		},
		{
			name:      "storage quota filled exactly",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000 },
			stored:    []file{f("a", 1, 1000), f("a", 2, 1000), f("b", 3, 500)},
			req:       f("c", 4, 500),
		},
		{
			name:      "uploads in progress count",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000 },
			stored:    []file{f("a", 1, 1000)},
			inFlight:  []file{f("b", 2, 1500)},
			req:       f("c", 3, 501),
			wantCode:  proto.CodeLimit,
			wantMsg:   "storage quota exceeded",
		},
		{
			name:      "uploads kept for resume count",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000 },
			stored:    []file{f("a", 1, 1000)},
			parked:    []file{f("b", 2, 1500)},
			req:       f("c", 3, 501),
			wantCode:  proto.CodeLimit,
			wantMsg:   "storage quota exceeded: 1000 B stored + 1.5 KiB in unfinished uploads + 501 B > 2.9 KiB",
		},
		{
			name:      "resuming a kept upload is not counted twice",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000; s.QuotaFiles = 2 },
			stored:    []file{f("a", 1, 1000)},
			parked:    []file{f("b", 2, 2000)},
			req:       f("b", 2, 2000),
		},
		{
			// The request discards it (PROTOCOL.md §9.3): counting it
			// would refuse the changed file until the partial upload
			// expired.
			name:      "a kept upload of an earlier state of the file does not count",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 3000; s.QuotaFiles = 1 },
			parked:    []file{f("b", 2, 2000)},
			req:       f("b", 3, 2500),
		},
		{
			name:      "uploads kept for resume count as files",
			configure: func(s *quicsrv.Server) { s.QuotaFiles = 2 },
			stored:    []file{f("a", 1, 10)},
			parked:    []file{f("b", 2, 5000)},
			req:       f("c", 3, 10),
			wantCode:  proto.CodeLimit,
			wantMsg:   "file quota exceeded: 1 file versions stored and 1 unfinished uploads, the limit is 2",
		},
		{
			name:      "file quota reached",
			configure: func(s *quicsrv.Server) { s.QuotaFiles = 2 },
			stored:    []file{f("a", 1, 10), f("a", 2, 10)},
			req:       f("b", 3, 10),
			wantCode:  proto.CodeLimit,
			wantMsg:   "file quota exceeded: 2 file versions stored, the limit is 2",
		},
		{
			name:      "new version over file quota",
			configure: func(s *quicsrv.Server) { s.QuotaFiles = 1 },
			stored:    []file{f("a", 1, 10)},
			req:       f("a", 2, 10),
			wantCode:  proto.CodeLimit,
			wantMsg:   "file quota exceeded",
		},
		{
			name:      "unchanged file at file quota",
			configure: func(s *quicsrv.Server) { s.QuotaFiles = 1 },
			stored:    []file{f("a", 1, 10)},
			req:       f("a", 1, 10),
			unchanged: true,
		},
		{
			name:      "unchanged file at storage quota",
			configure: func(s *quicsrv.Server) { s.QuotaBytes = 1000 },
			stored:    []file{f("a", 1, 1000)},
			req:       f("a", 1, 1000),
			unchanged: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := srvtest.Start(t, tt.configure)
			key, other := testKeys(t)
			c := registered(t, srv, "limited", key)
			for _, sf := range tt.stored {
				c.upload(sf.name, sf.data)
			}
			for _, sf := range tt.inFlight {
				c.startUpload(sf.name, sf.data)
			}
			for _, sf := range tt.parked {
				p := registered(t, srv, "limited", key)
				r := p.startUpload(sf.name, sf.data)
				half := sf.data[:len(sf.data)/2]
				p.sendData(p.chunkFrames(r.Xfer, r.UploadID, half, len(half))...)
				waitFor(t, "the half to be written", func() bool { return quicsrv.WrittenBytes(srv.Srv) == uint64(len(half)) })
				p.close()
				waitFor(t, "the upload to be parked", func() bool { return quicsrv.ActiveUploads(srv.Srv) == len(tt.inFlight) })
			}
			before := snapshotDir(t, srv.Dir)
			m := c.uploadReq(tt.req.name, tt.req.data)
			c.send(m)
			switch {
			case tt.wantCode != 0:
				em := c.expectError(m.Req, tt.wantCode)
				if !strings.Contains(em.Message, tt.wantMsg) {
					t.Errorf("Error message %q, want it to contain %q", em.Message, tt.wantMsg)
				}
				if after := snapshotDir(t, srv.Dir); !maps.Equal(before, after) {
					t.Errorf("a refused request changed the data directory:\nbefore %v\nafter  %v", before, after)
				}
			case tt.unchanged:
				r := expect[*proto.UploadReady](c)
				if r.Req != m.Req || r.Status != proto.ReadyUnchanged {
					t.Fatalf("UploadReady %+v, want ReadyUnchanged for req %d", r, m.Req)
				}
			default:
				r := expect[*proto.UploadReady](c)
				if r.Req != m.Req || r.Status != proto.ReadySend {
					t.Fatalf("UploadReady %+v, want ReadySend for req %d", r, m.Req)
				}
				for _, mr := range r.Missing {
					part := tt.req.data[mr.Off : mr.Off+mr.Len]
					c.sendData(framesAt(c, r.Xfer, r.UploadID, tt.req.data, int(mr.Off), int(mr.Off)+len(part), int(c.welcome.ChunkSize))...)
				}
				if res := c.finishUpload(r.Xfer, tt.req.data); res.Status != proto.ResultStored {
					t.Fatalf("upload result %+v, want stored", res)
				}
			}

			// What was stored before is intact.
			latest := make(map[string][]byte)
			for _, sf := range tt.stored {
				latest[sf.name] = sf.data
			}
			for name, data := range latest {
				if _, got := c.restore(name, 0); !bytes.Equal(got, data) {
					t.Errorf("restore of %q returned different bytes", name)
				}
			}

			// Another client's usage is its own.
			if tt.wantCode != 0 {
				o := registered(t, srv, "other", other)
				o.upload(tt.req.name, tt.req.data[:min(len(tt.req.data), 1000)])
			}
		})
	}
}

func TestUsageAfterLimits(t *testing.T) {
	// The store's view agrees with what the server enforced.
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.QuotaFiles = 1 })
	key, _ := testKeys(t)
	c := registered(t, srv, "limited", key)
	c.upload("a", seededBytes(1, 100))
	m := c.uploadReq("b", seededBytes(2, 100))
	c.send(m)
	c.expectError(m.Req, proto.CodeLimit)
	bytes, files, err := srv.Store.Usage(context.Background(), c.id)
	if err != nil || bytes != 100 || files != 1 {
		t.Errorf("Usage = %d, %d, %v; want 100, 1, nil", bytes, files, err)
	}
}
