package harness

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Image names in the test dockerd.
const (
	BusyboxImage = "busybox:latest"
	DebianImage  = "clawker-e2e-debian:latest"
)

// CacheDir holds rootfs tarballs across runs, keyed by version.
const CacheDir = "/var/cache/clawker-fw-e2e"

// Debian image recipe. Bump debianRecipeVersion when the trimming changes.
const (
	debianRecipeVersion = "1"
	debianSuite         = "bookworm"
	debianVariant       = "minbase"
	debianBuildTimeout  = 20 * time.Minute
	// TestCAPath is where the Debian image carries the test CA (also
	// appended to /etc/ssl/certs/ca-certificates.crt, which curl, git,
	// OpenSSL and Python use). Node ignores the system store: the image sets
	// NODE_EXTRA_CA_CERTS to this file.
	TestCAPath = "/usr/local/share/ca-certificates/clawker-test-ca.crt"
)

// DebianPackages are installed in the Debian image.
var DebianPackages = []string{"ca-certificates", "curl", "git", "openssh-client", "dnsutils", "python3", "nodejs"}

// ImportBusybox imports BusyboxImage (once per Env) from Debian's
// busybox-static: /bin/busybox, a symlink per applet, /etc/passwd and group.
func (e *Env) ImportBusybox() (string, error) {
	return e.importOnce(BusyboxImage, func() error {
		tarPath, err := e.busyboxTar()
		if err != nil {
			return err
		}
		f, err := os.Open(tarPath)
		if err != nil {
			return fmt.Errorf("open busybox tar: %w", err)
		}
		defer f.Close()
		_, _, err = e.DockerStdin(f, "import", "--change", `CMD ["sh"]`, "-", BusyboxImage)
		return err
	})
}

// ImportDebian imports DebianImage (once per Env): a debootstrap'd Debian
// (cached under CacheDir; the first build takes a few minutes) carrying
// DebianPackages, with the Env's test CA trusted system-wide.
func (e *Env) ImportDebian() (string, error) {
	return e.importOnce(DebianImage, func() error {
		tarPath, err := e.debianTar()
		if err != nil {
			return err
		}
		ca, err := os.ReadFile(e.CAFile())
		if err != nil {
			return fmt.Errorf("read test ca: %w", err)
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(withTestCA(tarPath, ca, pw)) }()
		defer pr.Close()
		_, _, err = e.DockerStdin(pr, "import",
			"--change", `CMD ["bash"]`,
			"--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"--change", "ENV LANG=C.UTF-8",
			"--change", "ENV NODE_EXTRA_CA_CERTS="+TestCAPath,
			"-", DebianImage)
		return err
	})
}

func (e *Env) importOnce(name string, build func() error) (string, error) {
	e.mu.Lock()
	done := e.images[name]
	e.mu.Unlock()
	if done {
		return name, nil
	}
	start := time.Now()
	if err := build(); err != nil {
		return "", fmt.Errorf("import %s: %w", name, err)
	}
	e.logf("imported %s in %v", name, time.Since(start).Round(time.Millisecond))
	e.mu.Lock()
	e.images[name] = true
	e.mu.Unlock()
	return name, nil
}

// lockCache serializes builds into CacheDir between processes.
func lockCache() (func(), error) {
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(CacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cache: %w", err)
	}
	return func() { f.Close() }, nil
}

func dpkgVersion(pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// busyboxTar returns the cached busybox rootfs tar, building it if needed.
func (e *Env) busyboxTar() (string, error) {
	const bin = "/bin/busybox"
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("busybox-static is not installed (apt-get install busybox-static): %w", err)
	}
	key := sha256.Sum256([]byte("busybox-1|" + dpkgVersion("busybox-static")))
	path := filepath.Join(CacheDir, "busybox-"+hex.EncodeToString(key[:6])+".tar")
	unlock, err := lockCache()
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return "", fmt.Errorf("busybox --list-full: %w", err)
	}
	body, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("read busybox: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dir := func(name string, mode int64) {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: now})
		_, _ = tw.Write(data)
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "dev", "proc", "sys", "run"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	file("bin/busybox", 0o755, body)
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: applet, Linkname: "/bin/busybox", Mode: 0o777, ModTime: now})
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("write busybox tar: %w", err)
	}
	if err := writeFileAtomic(path, buf.Bytes()); err != nil {
		return "", err
	}
	return path, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// aptMirror returns the Debian mirror configured on this machine.
func aptMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// deb822 stanzas: URIs + Suites.
		for _, stanza := range strings.Split(string(b), "\n\n") {
			var uri string
			var suites []string
			for _, line := range strings.Split(stanza, "\n") {
				if v, ok := strings.CutPrefix(line, "URIs:"); ok {
					uri = strings.TrimSpace(strings.Fields(v + " ")[0])
				}
				if v, ok := strings.CutPrefix(line, "Suites:"); ok {
					suites = strings.Fields(v)
				}
			}
			for _, s := range suites {
				if s == debianSuite && uri != "" {
					return uri
				}
			}
		}
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			// deb [opts] URI suite components
			if len(f) >= 3 && f[0] == "deb" {
				i := 1
				if strings.HasPrefix(f[1], "[") {
					for i < len(f) && !strings.HasSuffix(f[i], "]") {
						i++
					}
					i++
				}
				if i+1 < len(f) && f[i+1] == debianSuite {
					return f[i]
				}
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// debianTar returns the cached Debian rootfs tar, building it with
// debootstrap if needed.
func (e *Env) debianTar() (string, error) {
	key := sha256.Sum256([]byte(strings.Join([]string{debianRecipeVersion, debianSuite, debianVariant, strings.Join(DebianPackages, ",")}, "|")))
	path := filepath.Join(CacheDir, fmt.Sprintf("debian-%s-%s.tar", debianSuite, hex.EncodeToString(key[:6])))
	unlock, err := lockCache()
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", errors.New("debootstrap is not installed (apt-get install debootstrap)")
	}
	build, err := os.MkdirTemp(CacheDir, "build-")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	defer func() {
		_ = unmountUnder(build)
		_ = os.RemoveAll(build)
	}()
	rootfs := filepath.Join(build, "rootfs")
	mirror := aptMirror()
	start := time.Now()
	e.logf("building Debian image rootfs (debootstrap %s %s from %s; first build takes a few minutes)", debianSuite, debianVariant, mirror)
	cmd := exec.Command("debootstrap", "--variant="+debianVariant, "--include="+strings.Join(DebianPackages, ","), debianSuite, rootfs, mirror)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start debootstrap: %w", err)
	}
	timer := time.AfterFunc(debianBuildTimeout, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var lastLines []string
	sc := bufio.NewScanner(stdout)
	lastPrint := time.Time{}
	for sc.Scan() {
		line := sc.Text()
		lastLines = append(lastLines, line)
		if len(lastLines) > 20 {
			lastLines = lastLines[1:]
		}
		// Print phases (and at most one line per 5 s of the rest).
		if strings.HasPrefix(line, "I: Retrieving") && time.Since(lastPrint) < 5*time.Second {
			continue
		}
		lastPrint = time.Now()
		e.logf("  debootstrap [%v] %s", time.Since(start).Round(time.Second), line)
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("debootstrap: %w:\n%s", err, strings.Join(lastLines, "\n"))
	}
	_ = unmountUnder(rootfs)
	// Trim what tests never need; keep apt's configuration.
	for _, glob := range []string{"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
		"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "var/log/*", "var/cache/debconf/*-old"} {
		matches, _ := filepath.Glob(filepath.Join(rootfs, glob))
		for _, m := range matches {
			_ = os.RemoveAll(m)
		}
	}
	tmp := path + ".tmp"
	if err := run("tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", tmp, "."); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("rename %s: %w", tmp, err)
	}
	fi, _ := os.Stat(path)
	e.logf("Debian rootfs built in %v (%d MB, cached at %s)", time.Since(start).Round(time.Second), fi.Size()>>20, path)
	return path, nil
}

// withTestCA copies the tar at src to w, appending ca to the system CA
// bundle and adding it as TestCAPath.
func withTestCA(src string, ca []byte, w io.Writer) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
	tw := tar.NewWriter(w)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", src, err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		if name == "etc/ssl/certs/ca-certificates.crt" && hdr.Typeflag == tar.TypeReg {
			body, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			body = append(append(body, '\n'), ca...)
			hdr.Size = int64(len(body))
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := tw.Write(body); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(TestCAPath, "/"), Mode: 0o644, Size: int64(len(ca)), ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(ca); err != nil {
		return err
	}
	return tw.Close()
}
