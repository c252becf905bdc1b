package dns

import clog "github.com/coredns/coredns/plugin/pkg/log"

// Logger is the part of CoreDNS's plugin logger the plugin uses; tests
// swap in a recorder to assert decision lines.
type Logger interface {
	Info(v ...any)
	Warning(v ...any)
	Error(v ...any)
	Debugf(format string, v ...any)
	Infof(format string, v ...any)
	Warningf(format string, v ...any)
	Errorf(format string, v ...any)
}

var log Logger = clog.NewWithPlugin(pluginName)
