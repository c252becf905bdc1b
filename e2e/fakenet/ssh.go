package fakenet

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// sshd is a real OpenSSH server on a loopback port behind the recording
// listener: the public port records the connection (with the client's real
// source address) and splices it to sshd.
type sshd struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (s *Server) startSSH() error {
	c := s.cfg.SSH
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("create ssh dir: %w", err)
	}
	// sshd refuses to start without its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("create /run/sshd: %w", err)
	}
	hostKey := filepath.Join(c.Dir, "ssh_host_ed25519_key")
	if _, err := os.Stat(hostKey); err != nil {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fakenet", "-f", hostKey).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	conf := filepath.Join(c.Dir, "sshd_config")
	body := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
LogLevel VERBOSE
`, port, hostKey, c.AuthorizedKeys, filepath.Join(c.Dir, "sshd.pid"))
	if err := writeFile(conf, []byte(body), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(c.Dir, "sshd.log"))
	if err != nil {
		return fmt.Errorf("create sshd log: %w", err)
	}
	cmd := exec.Command(c.Sshd, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start sshd: %w", err)
	}
	d := &sshd{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(d.done)
		s.fail(fmt.Errorf("sshd exited: %v", err))
	}()
	s.track("sshd", nil, func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	backend := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitDial(backend, 5*time.Second); err != nil {
		return fmt.Errorf("sshd not listening (see %s): %w", filepath.Join(c.Dir, "sshd.log"), err)
	}
	ln, err := s.listen(c.Port)
	if err != nil {
		return err
	}
	s.track("ssh", ln.Addr(), func() { ln.Close() })
	s.serveConns(ln, "ssh", func(client net.Conn) {
		up, err := net.DialTimeout("tcp", backend, 5*time.Second)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(up, client)
			if tc, ok := up.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			close(done)
		}()
		_, _ = io.Copy(client, up)
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		<-done
	})
	return nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick loopback port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitDial(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
