package quicsrv

import (
	"github.com/qbackup/qbackup/proto"
)

// Joined uploads: a client sending over several connections at once
// (qbackup send --connections) opens each upload on one session, its
// owner, and joins it from the others, which then carry chunks of it
// under transfer numbers of their own. Everything else about the upload
// (checksum, commit, abort, errors, resume) stays with the owner; when it
// ends, it leaves the joined sessions too.

// joinRef is a session carrying chunks of an upload it did not open.
type joinRef struct {
	ss   *session
	xfer uint32
}

func (ss *session) uploadJoin(m *proto.UploadJoin) {
	if err := ss.joinUpload(m); err != nil {
		ss.requestFailed(m.Req, err)
	}
}

func (ss *session) joinUpload(m *proto.UploadJoin) error {
	u := ss.srv.activeUpload(m.UploadID)
	if u == nil || u.owner == ss || u.owner.client.ID != ss.client.ID {
		// Another client's upload is as unknown as one that never was.
		return proto.Errorf(proto.CodeNotFound, "no upload %x is being received by another session of this client", m.UploadID)
	}
	ss.mu.Lock()
	xfer, err := ss.newXferLocked(false)
	if err == nil {
		ss.unreserveLocked() // in ss.uploads at once, or not at all
		if ss.uploads == nil {
			err = errAnswerLost // the session ended meanwhile
		}
	}
	if err != nil {
		ss.mu.Unlock()
		return err
	}
	ss.uploads[xfer] = u
	ss.mu.Unlock()

	u.mu.Lock()
	if u.state != receiving {
		u.mu.Unlock()
		ss.mu.Lock()
		delete(ss.uploads, xfer)
		ss.mu.Unlock()
		return proto.Errorf(proto.CodeAborted, "the upload of %q is no longer receiving chunks", u.name)
	}
	u.joined = append(u.joined, joinRef{ss: ss, xfer: xfer})
	missing := u.done.Missing(u.size)
	if len(missing) > proto.MaxRanges {
		missing = []proto.Range{{Off: missing[0].Off, Len: u.size - missing[0].Off}}
	}
	u.mu.Unlock()
	ss.log.Debug("joined upload", "name", u.name, "xfer", xfer)
	return ss.answer(&proto.UploadReady{Req: m.Req, Xfer: xfer, UploadID: u.id, Status: proto.ReadyJoined, Missing: missing})
}

// activeUpload returns the upload with the given ID that a session is
// receiving, or nil.
func (s *Server) activeUpload(id [16]byte) *upload {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	return s.active[id]
}

// detachJoined removes an upload that ended from the sessions that joined
// it; chunks that still arrive for it there are dropped.
func (u *upload) detachJoined() {
	u.mu.Lock()
	joined := u.joined
	u.joined = nil
	u.mu.Unlock()
	for _, j := range joined {
		j.ss.mu.Lock()
		if j.ss.uploads != nil && j.ss.uploads[j.xfer] == u {
			delete(j.ss.uploads, j.xfer)
		}
		j.ss.mu.Unlock()
		j.ss.transferEnded()
	}
}
