package sdk

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Plugin is a running plugin process, seen from the side that launched it
// (the host, or a conformance test).
type Plugin struct {
	// Runtime talks to the plugin.
	Runtime Runtime
	client  *plugin.Client
	cmd     *exec.Cmd
	// lifeline is the host's end of the pipe the plugin watches; closing it
	// tells the plugin to exit.
	lifeline *os.File
}

// LaunchOptions tune Launch.
type LaunchOptions struct {
	// Logger receives go-plugin's log and the plugin's own log lines.
	Logger hclog.Logger
	// Env is added to the plugin's environment (which is otherwise the
	// launching process's).
	Env []string
	// StartTimeout bounds the handshake; zero means 10 seconds.
	StartTimeout time.Duration
	// SHA256, when set, is the executable's expected SHA-256: go-plugin
	// checks it right before starting the process and refuses a file
	// that differs.
	SHA256 []byte
	// Args are the arguments the executable is started with (none by
	// default), for an executable that holds several runtimes, or is more
	// than a plugin (task-executor itself serves each built-in runtime as
	// "task-executor plugin NAME").
	Args []string
	// ExtraFiles are passed to the plugin as file descriptors 4, 5, ...
	// (3 is the lifeline). Env tells the plugin what they hold.
	ExtraFiles []*os.File
	// SocketDir, when set, is the directory the plugin creates the Unix
	// socket it serves on in, instead of the system's temporary
	// directory. Either way Kill removes the socket, which a plugin that
	// was killed or died could not.
	SocketDir string
}

// Launch starts the plugin executable at path and connects to it over gRPC
// with go-plugin's automatic mutual TLS, so that only the launching process
// can talk to the plugin.
func Launch(path string, opts LaunchOptions) (*Plugin, error) {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 10 * time.Second
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("while creating the lifeline pipe: %w", err)
	}
	cmd := exec.Command(path, opts.Args...)
	cmd.ExtraFiles = append([]*os.File{lifeR}, opts.ExtraFiles...)
	// Our variables go last so they win over inherited ones of the same name.
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=3", EnvLifelineFD))
	cmd.Env = append(cmd.Env, opts.Env...)
	if opts.SocketDir != "" {
		cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+opts.SocketDir)
	}
	var secure *plugin.SecureConfig
	if len(opts.SHA256) > 0 {
		secure = &plugin.SecureConfig{Checksum: opts.SHA256, Hash: sha256.New()}
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          plugin.PluginSet{PluginName: &GRPCPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SkipHostEnv:      true, // cmd.Env already holds it
		SecureConfig:     secure,

		Logger:       opts.Logger,
		StartTimeout: opts.StartTimeout,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes))},
	})
	p := &Plugin{client: client, cmd: cmd, lifeline: lifeW}
	rpc, err := client.Client()
	lifeR.Close() // the plugin has its copy now
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("while starting plugin %s: %w", path, err)
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("while dispensing the runtime of plugin %s: %w", path, err)
	}
	rt, ok := raw.(Runtime)
	if !ok {
		p.Kill()
		return nil, fmt.Errorf("plugin %s dispensed %T, not a runtime", path, raw)
	}
	p.Runtime = rt
	return p, nil
}

// Pid returns the plugin's process ID, or 0 if it is unknown.
func (p *Plugin) Pid() int {
	if rc := p.client.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// Exited reports whether the plugin process has exited.
func (p *Plugin) Exited() bool { return p.client.Exited() }

// Ping checks that the plugin answers.
func (p *Plugin) Ping(ctx context.Context) error {
	rpc, err := p.client.Client()
	if err != nil {
		return err
	}
	return rpc.Ping()
}

// KillNow kills the plugin process at once, without first asking it to
// exit as Kill does, for a plugin known to be stuck; then it releases what
// Kill releases.
func (p *Plugin) KillNow() {
	p.killProcess()
	p.Kill()
}

// killProcess SIGKILLs the plugin process. os.Process signals through a
// pidfd: never a recycled PID.
func (p *Plugin) killProcess() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
	}
}

// gracefulExit bounds Kill's request that the plugin exit: a stuck plugin
// never answers it (go-plugin's own wait after the answer is 2 s).
const gracefulExit = 3 * time.Second

// Kill stops the plugin: a graceful shutdown request, then a kill. Tasks
// the plugin started keep running; a new plugin can Recover them.
func (p *Plugin) Kill() {
	var socket string
	if rc := p.client.ReattachConfig(); rc != nil && rc.Addr != nil && rc.Addr.Network() == "unix" {
		socket = rc.Addr.String()
	}
	done := make(chan struct{})
	go func() {
		p.client.Kill()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(gracefulExit):
		// The request hangs on a plugin that does not answer; once the
		// process is gone it fails, and Kill finishes.
		p.killProcess()
		<-done
	}
	p.lifeline.Close()
	// go-plugin's server removes its socket only when it stops gracefully.
	if socket != "" {
		_ = os.Remove(socket)
	}
}
