package dns

import (
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// notifier wakes the Watcher when its file is replaced: an inotify watch
// on the file's directory (the writer renames a new head into place), read
// through the runtime's poller so that close unblocks it. Polling stays:
// the events only make the load come sooner.
type notifier struct {
	f  *os.File
	ch chan bool
}

// newNotifier watches the directory of path; nil when inotify is not
// available or the directory does not exist (the caller polls).
func newNotifier(path string) *notifier {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_CREATE|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF); err != nil {
		unix.Close(fd)
		return nil
	}
	n := &notifier{f: os.NewFile(uintptr(fd), "inotify"), ch: make(chan bool, 1)}
	name := filepath.Base(path)
	go n.run(name)
	return n
}

// run sends true on an event about name (coalesced) and closes the
// channel when the watch ends (directory gone, notifier closed).
func (n *notifier) run(name string) {
	defer close(n.ch)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		k, err := n.f.Read(buf)
		if err != nil || k < unix.SizeofInotifyEvent {
			return
		}
		hit, gone := false, false
		for off := 0; off+unix.SizeofInotifyEvent <= k; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			end := off + unix.SizeofInotifyEvent + int(ev.Len)
			if end > k {
				break
			}
			evName := string(trimNUL(buf[off+unix.SizeofInotifyEvent : end]))
			if evName == name {
				hit = true
			}
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				gone = true
			}
			off = end
		}
		if hit {
			select {
			case n.ch <- true:
			default:
			}
		}
		if gone {
			return
		}
	}
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// events is the channel of wake-ups (nil, never ready, for a nil notifier).
func (n *notifier) events() <-chan bool {
	if n == nil {
		return nil
	}
	return n.ch
}

func (n *notifier) close() {
	if n != nil {
		n.f.Close()
	}
}
