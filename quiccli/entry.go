package quiccli

import (
	"fmt"
	"io/fs"
	"os/user"
	"strconv"
	"sync"

	"github.com/qbackup/qbackup/proto"
)

// kindOf returns the kind of entry a file mode describes.
func kindOf(m fs.FileMode) (proto.Kind, bool) {
	switch t := m.Type(); {
	case t == 0:
		return proto.KindFile, true
	case t&fs.ModeDir != 0:
		return proto.KindDir, true
	case t&fs.ModeSymlink != 0:
		return proto.KindSymlink, true
	case t&fs.ModeNamedPipe != 0:
		return proto.KindFIFO, true
	case t&fs.ModeSocket != 0:
		return proto.KindSocket, true
	case t&fs.ModeCharDevice != 0:
		return proto.KindCharDev, true
	case t&fs.ModeDevice != 0:
		return proto.KindBlock, true
	}
	return 0, false
}

// posixMode returns the permission, setuid, setgid and sticky bits of m in
// POSIX numbering, as the protocol carries them.
func posixMode(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= proto.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 {
		p |= proto.ModeSetgid
	}
	if m&fs.ModeSticky != 0 {
		p |= proto.ModeSticky
	}
	return p
}

// fileMode is posixMode's inverse.
func fileMode(p uint32) fs.FileMode {
	m := fs.FileMode(p & 0o777)
	if p&proto.ModeSetuid != 0 {
		m |= fs.ModeSetuid
	}
	if p&proto.ModeSetgid != 0 {
		m |= fs.ModeSetgid
	}
	if p&proto.ModeSticky != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// owners caches user and group names by number: a tree has few owners
// and many files.
var owners struct {
	sync.Mutex
	users, groups map[uint32]string
}

// ownerNames returns the names of uid and gid, "" where the system has
// none.
func ownerNames(uid, gid uint32) (string, string) {
	owners.Lock()
	defer owners.Unlock()
	if owners.users == nil {
		owners.users, owners.groups = map[uint32]string{}, map[uint32]string{}
	}
	u, ok := owners.users[uid]
	if !ok {
		if v, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			u = v.Username
		}
		owners.users[uid] = u
	}
	g, ok := owners.groups[gid]
	if !ok {
		if v, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
			g = v.Name
		}
		owners.groups[gid] = g
	}
	return u, g
}

// maxHoles bounds the holes recorded of one sparse file, so that the
// record stays well within a message: a file with more is restored with
// its first maxHoles holes, and the rest allocated.
const maxHoles = 2048

// fitMeta trims m until its record fits in a message: the largest
// extended attributes go first, then holes beyond the first. It returns
// what it left out, in words, for a warning.
func fitMeta(m *proto.Meta) []string {
	var dropped []string
	for len(proto.AppendMeta(nil, m)) > proto.MaxMetaLen {
		if len(m.Xattrs) == 0 {
			if len(m.Holes) > 1 {
				m.Holes = m.Holes[:len(m.Holes)/2]
				continue
			}
			break // cannot happen: the rest is a few hundred bytes
		}
		big := 0
		for i, x := range m.Xattrs {
			if len(x.Value) > len(m.Xattrs[big].Value) {
				big = i
			}
		}
		x := m.Xattrs[big]
		dropped = append(dropped, fmt.Sprintf("extended attribute %s (%s) is too large to back up", x.Name, formatBytes(int64(len(x.Value)))))
		m.Xattrs = append(m.Xattrs[:big], m.Xattrs[big+1:]...)
	}
	return dropped
}
