// Package logsplit sends a logrus logger's warn and error lines to one
// writer and its info and debug lines to another.
//
// dockerd relays a managed plugin's stdout into its own log at level info
// and its stderr at level error, whatever the line says (moby
// plugin/manager.go makeLoggerStreams in 20.10; daemon/pkg/plugin/manager.go
// in current moby: logger.WriterLevel(InfoLevel) and (ErrorLevel)). The
// plugin therefore writes info and debug to stdout and warn and above to
// stderr; the line's own level stays in it as the JSON field "level".
package logsplit

import (
	"io"

	"github.com/sirupsen/logrus"
)

// Setup makes l write lines at warn and above to stderr and the others to
// stdout, formatted by l's current formatter.
func Setup(l *logrus.Logger, stdout, stderr io.Writer) {
	l.SetFormatter(&tagged{inner: l.Formatter})
	l.SetOutput(&router{stdout: stdout, stderr: stderr})
}

// tagged prefixes each formatted line with one byte telling its stream.
type tagged struct{ inner logrus.Formatter }

const (
	toStdout = 'o'
	toStderr = 'e'
)

func (t *tagged) Format(e *logrus.Entry) ([]byte, error) {
	b, err := t.inner.Format(e)
	if err != nil {
		return nil, err
	}
	tag := byte(toStdout)
	if e.Level <= logrus.WarnLevel {
		tag = toStderr
	}
	return append([]byte{tag}, b...), nil
}

// router writes a tagged line, without its tag, to its stream. logrus
// writes each entry with one Write under its lock.
type router struct{ stdout, stderr io.Writer }

func (r *router) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w := r.stdout
	switch p[0] {
	case toStderr:
		w = r.stderr
	case toStdout:
	default: // not from tagged (someone wrote to the logger's Writer): as is
		return w.Write(p)
	}
	n, err := w.Write(p[1:])
	return n + 1, err
}
