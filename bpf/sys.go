package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	bpffsMagic    = 0xcafe4a11
	cgroup2Magic  = 0x63677270
	soNetnsCookie = 71 // SO_NETNS_COOKIE
)

// ErrPinDirInUse is returned by LockPinDir when another process holds the
// pin directory.
var ErrPinDirInUse = errors.New("pin directory in use")

// LockPinDir takes an exclusive, non-blocking flock on the pin directory
// dir (created if missing) and holds it until release is called or the
// process exits. Two plugins on one kernel (a second dockerd in its own
// network namespace, e.g. a swarm worker next to a manager) each attach
// their own programs at the cgroup root, which is safe (a program passes
// every socket whose namespace its maps do not enroll), but two plugins on
// one pin directory would rebuild and rewrite each other's maps: the
// second one must not start. The lock is on the bpffs inode, so it holds
// across mount namespaces.
func LockPinDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open pin dir %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w by another clawker-fw on this kernel (give each plugin its own CLAWKER_BPF_PIN_DIR)", dir, ErrPinDirInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

// CheckHostBPFFS checks that path is on a mounted bpffs. Pins made anywhere
// else (a tmpfs, a bpffs that dies with a mount namespace) do not keep the
// programs attached. Whether that bpffs is the host's instance is for the
// caller to check (the plugin compares it with what the host mounted).
func CheckHostBPFFS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w (mount bpffs on the host: mount -t bpf bpf /sys/fs/bpf)", path, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("%s is not a bpffs (fs magic %#x): mount it on the host with `mount -t bpf bpf /sys/fs/bpf`"+
			" before starting clawker-fw, and bind-mount it into the plugin with rshared propagation", path, st.Type)
	}
	return nil
}

func checkCgroup2(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs cgroup %s: %w", path, err)
	}
	if uint32(st.Type) != cgroup2Magic {
		return fmt.Errorf("%s is not a cgroup2 directory (fs magic %#x)", path, st.Type)
	}
	return nil
}

// cgroupID is the id of a cgroup2 directory: its inode number.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// DetectCgroup2 returns the mount point of the cgroup2 hierarchy:
// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
func DetectCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source opts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				found = append(found, fields[4])
			}
		}
	}
	for _, p := range found {
		if p == "/sys/fs/cgroup" {
			return p, nil
		}
	}
	if len(found) > 0 {
		return found[0], nil
	}
	return "", errors.New("detect cgroup2: no cgroup2 mount found")
}

// checkPrivileges requires root or the effective capabilities BPF programs
// and cgroup attachment need (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN).
func checkPrivileges() error {
	if os.Geteuid() == 0 {
		return nil
	}
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return fmt.Errorf("parse CapEff: %w", err)
			}
			const capNetAdmin, capSysAdmin, capBPF = 12, 21, 39
			if caps&(1<<capSysAdmin) != 0 || (caps&(1<<capBPF) != 0 && caps&(1<<capNetAdmin) != 0) {
				return nil
			}
			return errors.New("loading clawker-fw's BPF programs needs root or CAP_BPF and CAP_NET_ADMIN")
		}
	}
	return errors.New("read capabilities: no CapEff in /proc/self/status")
}

// InNetns runs fn on a thread that has joined the network namespace at
// netnsPath; sockets fn creates belong to that namespace. The thread is
// restored afterwards, or retired if it cannot be (it never runs other
// goroutines in the wrong namespace).
func InNetns(netnsPath string, fn func() error) error {
	target, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", netnsPath, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// NetnsCookie returns the cookie of the network namespace at netnsPath, as
// bpf_get_netns_cookie() sees it: SO_NETNS_COOKIE of a socket opened there.
func NetnsCookie(netnsPath string) (uint64, error) {
	var fd int
	err := InNetns(netnsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: getsockopt SO_NETNS_COOKIE: %w", netnsPath, err)
	}
	return c, nil
}

// monoNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func monoNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err)) // cannot fail on Linux
	}
	return uint64(ts.Nano())
}

// toMono converts a wall-clock instant to CLOCK_MONOTONIC ns (0 for the
// zero time, clamped at 0 for instants before boot).
func toMono(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	now := monoNow()
	d := time.Until(t)
	if d < 0 && uint64(-d) > now {
		return 0
	}
	return uint64(int64(now) + int64(d))
}

// fromMono converts CLOCK_MONOTONIC ns to wall-clock time.
func fromMono(ns uint64) time.Time {
	return time.Now().Add(time.Duration(int64(ns) - int64(monoNow())))
}
