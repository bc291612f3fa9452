package sdk

import (
	"context"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// ProtocolVersion is the version of the host–plugin protocol this SDK
// speaks. It changes only when the protocol changes incompatibly; the
// handshake refuses a plugin built for another version.
const ProtocolVersion = 1

// PluginName is the name under which a runtime is dispensed.
const PluginName = "runtime"

// Handshake is the go-plugin handshake shared by the host and its plugins.
// The cookie only keeps a plugin from being run by hand by mistake; it is
// not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "TASK_EXECUTOR_PLUGIN",
	MagicCookieValue: "runtime-v1-7f3c1e2a",
}

// Environment variables the host sets for its plugins.
const (
	// EnvLifelineFD names the file descriptor of a pipe whose other end the
	// host holds: it reads EOF when the host is gone.
	EnvLifelineFD = "TASK_EXECUTOR_LIFELINE_FD"
	// EnvLogLevel is the host's log level, for the plugin's logger.
	EnvLogLevel = "TASK_EXECUTOR_LOG_LEVEL"
)

// Logger returns the logger a plugin should use: JSON lines on stderr, which
// the host reads and writes into its own log under the plugin's name, at the
// host's log level.
func Logger(name string) hclog.Logger {
	level := hclog.LevelFromString(os.Getenv(EnvLogLevel))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true,
	})
}

// Serve serves rt as a task-executor runtime plugin. Call it from main; it
// does not return. The plugin exits when the host goes away, whether the host
// stopped cleanly or was killed: runtimes must not need the plugin process
// to keep their tasks running (see the package documentation).
func Serve(rt Runtime) {
	logger := Logger("plugin")
	// Whatever the host left open without close-on-exec must not leak into
	// the processes the runtime starts (the lifeline included).
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	watchLifeline(logger)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: rt}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, grpc.MaxRecvMsgSize(maxMessageBytes), grpc.MaxSendMsgSize(maxMessageBytes),
				// Calls run on goroutines kept for them, whose stacks have
				// grown already, rather than on a new goroutine each (a
				// task's Start grew its stack twice on the way).
				grpc.NumStreamWorkers(uint32(4*runtime.NumCPU())))
			return grpc.NewServer(opts...)
		},
		Logger: logger,
	})
	// plugin.Serve returns when the host asked the plugin to exit; the host
	// kills it if it takes longer than a couple of seconds.
	if c, ok := rt.(Closer); ok {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		c.Close(ctx)
	}
}

// Closer is implemented by a runtime that has work of its own in flight
// (clean-ups started after a task ended, say) worth finishing when the host
// stops the plugin in an orderly way. Serve calls Close once the host has
// asked the plugin to exit, with a context that ends shortly before the
// host would kill the plugin. It is never called when the plugin is killed
// or the host dies, so a runtime must not depend on it.
type Closer interface {
	Close(ctx context.Context)
}

// closeTimeout keeps Close within go-plugin's two seconds between asking a
// plugin to exit and killing it.
const closeTimeout = 1500 * time.Millisecond

// watchLifeline exits the plugin once the host's end of the lifeline pipe is
// closed. Without it a plugin outlives a killed host: go-plugin plugins keep
// serving until told to stop, and nobody would tell them.
func watchLifeline(logger hclog.Logger) {
	v := os.Getenv(EnvLifelineFD)
	if v == "" {
		return
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		logger.Warn("ignoring a bad lifeline descriptor", "value", v)
		return
	}
	// Keep the lifeline out of every process the plugin starts, or a task
	// would hold it open and the plugin would outlive the host.
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "lifeline")
	go func() {
		_, _ = io.Copy(io.Discard, f)
		logger.Info("the host has gone away; exiting")
		os.Exit(0)
	}()
}
