// Package dispatch finds the runtime plugins, launches each with go-plugin,
// keeps it running (a plugin that dies is started again, and its runtime's
// tasks are handed to the new process to recover), and forwards the status
// changes plugins push to an Observer (the task manager).
//
// Plugins are not reattached after a host restart: they exit with the host
// (see sdk.Serve) and are started afresh, which is what lets the host use
// go-plugin's AutoMTLS. Nothing is lost by it: a runtime keeps what it needs
// to find its tasks outside the plugin process.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/sdk"
)

// Observer receives what plugins report.
type Observer interface {
	// RuntimeUp: the runtime's plugin has (re)started and is ready.
	RuntimeUp(name string, rt sdk.Runtime)
	// RuntimeDown: the runtime's plugin has gone.
	RuntimeDown(name string)
	// Report: a task's status changed.
	Report(runtime string, st sdk.TaskStatus)
}

// Config tells the manager where plugins are and what to tell them.
type Config struct {
	// PluginDir holds third-party plugins ("": none).
	PluginDir string
	// Builtins are runtimes the host brings with it, each served by an
	// executable outside PluginDir (the host's own). A plugin in PluginDir
	// replaces a built-in when its file is named for the built-in, or when
	// it reports the built-in's runtime name at its first launch.
	Builtins []Builtin
	// PluginEnv is added to every plugin's environment and PluginFiles
	// are passed to every plugin as descriptors 4, 5, ... (see
	// sdk.LaunchOptions): what the host shares with all its plugins, such
	// as the shim.
	PluginEnv   []string
	PluginFiles []*os.File
	// SocketDir is where plugins create their sockets ("": the system's
	// temporary directory).
	SocketDir string
	DataDir   string
	Settings  map[string]string
	LogLevel  string
	// Checksums, when not nil, pins every plugin by file name to its
	// SHA-256 (see LoadChecksums): any other plugin is refused.
	Checksums map[string][]byte
	// Metrics, when not nil, counts plugin restarts.
	Metrics *metrics.Metrics
	// Disabled names plugins (by file name) not to launch, with why: the
	// cri plugin without container mode, which would only fail to reach a
	// CRI socket nobody asked it to use.
	Disabled map[string]string
}

// Builtin is a runtime the host brings with it.
type Builtin struct {
	// Name is the runtime's name (and the name of the plugin file that
	// would replace it).
	Name string
	// Path and Args start the plugin that serves it.
	Path string
	Args []string
}

// RuntimeStatus describes an installed runtime for operators.
type RuntimeStatus struct {
	sdk.Info
	Path string
	// Builtin: the runtime is one the host brings (Path is then the
	// host's executable), not a plugin of the plugin directory.
	Builtin bool
	// ProtocolVersion is the host–plugin protocol the plugin speaks; 0
	// until it has come up once.
	ProtocolVersion int
	Healthy         bool
	Restarts        int
	// LastError is why the plugin last failed, if it did.
	LastError string
}

// Manager runs the plugins.
type Manager struct {
	cfg Config
	log hclog.Logger
	obs Observer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	sups      []*supervisor
	byName    map[string]*supervisor
	launching int
	// refused maps runtime names to why their plugin was refused.
	refused map[string]string
}

// New returns a manager; Start launches the plugins.
func New(cfg Config, log hclog.Logger) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, log: log, ctx: ctx, cancel: cancel, byName: map[string]*supervisor{}, refused: map[string]string{}}
}

// Start finds the plugin executables and launches them, reporting to obs.
// It returns once every plugin has been tried once, so that the set of
// installed runtimes is known; plugins that failed keep being retried.
func (m *Manager) Start(obs Observer) error {
	m.obs = obs
	var paths []string
	if m.cfg.PluginDir != "" {
		var err error
		if paths, err = discover(m.cfg.PluginDir); err != nil {
			return err
		}
	}
	// The plugin directory's first, so that one can claim a built-in's
	// runtime name before the built-in is launched.
	files := map[string]bool{}
	var dirFirst sync.WaitGroup
	for _, p := range paths {
		files[filepath.Base(p)] = true
		m.launch(&supervisor{m: m, path: p, log: m.log.Named(filepath.Base(p))}, &dirFirst)
	}
	m.waitFirst(&dirFirst)
	var builtinFirst sync.WaitGroup
	for _, b := range m.cfg.Builtins {
		m.mu.Lock()
		claimed := m.byName[b.Name]
		m.mu.Unlock()
		switch {
		case files[b.Name]:
			m.log.Info("a plugin replaces the built-in runtime", "runtime", b.Name, "path", filepath.Join(m.cfg.PluginDir, b.Name))
			continue
		case claimed != nil:
			m.log.Info("a plugin replaces the built-in runtime", "runtime", b.Name, "path", claimed.path)
			continue
		}
		m.launch(&supervisor{m: m, path: b.Path, args: b.Args, builtin: b.Name, log: m.log.Named(b.Name)}, &builtinFirst)
	}
	m.waitFirst(&builtinFirst)
	if len(m.sups) == 0 {
		m.log.Warn("no runtimes to launch; every task will be refused", "pluginDir", m.cfg.PluginDir)
	}
	return nil
}

// firstWait bounds how long Start waits for plugins to come up the first
// time; one that takes longer (hung in its handshake or Init) comes up, or
// is restarted, in the background.
const firstWait = 10 * time.Second

// initTimeout bounds a plugin's Init: a plugin still in it is killed and
// started again.
const initTimeout = 20 * time.Second

// waitFirst waits for first, at most firstWait.
func (m *Manager) waitFirst(first *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		first.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(firstWait):
		m.log.Warn("runtime plugins are slow to come up; going on without them", "waited", firstWait.String())
	}
}

// launch starts supervising s, unless its runtime is disabled; first is
// done once s has tried once.
func (m *Manager) launch(s *supervisor, first *sync.WaitGroup) {
	if why, off := m.cfg.Disabled[s.fileName()]; off {
		m.log.Info("not launching a runtime plugin", "runtime", s.fileName(), "path", s.path, "reason", why)
		return
	}
	m.mu.Lock()
	m.sups = append(m.sups, s)
	m.mu.Unlock()
	first.Add(1)
	m.wg.Add(1)
	go s.run(first.Done)
}

// discover lists the executable regular files in dir. Everything in the
// plugin directory is taken for a plugin: keep other files elsewhere.
func discover(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("while reading the plugin directory %s: %w", dir, err)
	}
	var out []string
	for _, e := range entries {
		if e.Name()[0] == '.' {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p) // follows links on purpose
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		out = append(out, abs)
	}
	sort.Strings(out)
	return out, nil
}

// Runtime returns what the named runtime said of itself and, if its plugin
// is up, the runtime.
func (m *Manager) Runtime(name string) (sdk.Info, sdk.Runtime, bool) {
	m.mu.Lock()
	s := m.byName[name]
	m.mu.Unlock()
	if s == nil {
		return sdk.Info{}, nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.plugin == nil {
		return s.info, nil, false
	}
	return s.info, s.plugin.Runtime, true
}

// Installed lists the runtimes that were found, whether up or not.
func (m *Manager) Installed() []sdk.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]sdk.Info, 0, len(m.byName))
	for _, s := range m.byName {
		s.mu.Lock()
		out = append(out, s.info)
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Failing maps each runtime whose plugin is not up to why: by the runtime's
// name once its plugin came up, by its file name before.
func (m *Manager) Failing() map[string]string {
	m.mu.Lock()
	sups := append([]*supervisor(nil), m.sups...)
	m.mu.Unlock()
	out := map[string]string{}
	for _, s := range sups {
		s.mu.Lock()
		if s.plugin == nil {
			name := s.info.Name
			if name == "" {
				name = s.fileName()
			}
			why := "its plugin is starting"
			if s.lastErr != nil {
				why = s.lastErr.Error()
			}
			out[name] = why
		}
		s.mu.Unlock()
	}
	return out
}

// Status describes every plugin found.
func (m *Manager) Status() []RuntimeStatus {
	m.mu.Lock()
	sups := append([]*supervisor(nil), m.sups...)
	m.mu.Unlock()
	out := make([]RuntimeStatus, 0, len(sups))
	for _, s := range sups {
		s.mu.Lock()
		st := RuntimeStatus{Info: s.info, Path: s.path, Builtin: s.builtin != "", Healthy: s.plugin != nil, Restarts: s.restarts}
		if st.Name == "" {
			st.Name = s.builtin
		}
		if s.info.Name != "" {
			// The handshake refuses any other version, so a plugin that
			// came up speaks this one.
			st.ProtocolVersion = sdk.ProtocolVersion
		}
		if s.lastErr != nil {
			st.LastError = s.lastErr.Error()
		}
		s.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// isPlugin reports whether pid is one of the plugin processes, or whether
// that cannot be told because a plugin is being launched right now.
func (m *Manager) isPlugin(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.launching > 0 {
		return true
	}
	for _, s := range m.sups {
		if s.pid() == pid {
			return true
		}
	}
	return false
}

// Restart kills the plugin of runtime name, which a caller found stuck
// (why): it is started again with the usual backoff, and its runtime's
// tasks are recovered by the new process.
func (m *Manager) Restart(name, why string) {
	m.mu.Lock()
	s := m.byName[name]
	m.mu.Unlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	p := s.plugin
	if p != nil {
		s.stuck = why
	}
	s.mu.Unlock()
	if p == nil {
		return
	}
	s.log.Error("killing a stuck runtime plugin; it will be started again", "runtime", name, "pid", p.Pid(), "reason", why)
	go p.KillNow()
}

// Close stops every plugin. Tasks keep running.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// supervisor keeps one plugin executable running.
type supervisor struct {
	m    *Manager
	path string
	args []string
	// builtin is the name of the built-in runtime the plugin serves; ""
	// for a plugin of the plugin directory.
	builtin string
	log     hclog.Logger

	mu     sync.Mutex
	info   sdk.Info
	plugin *sdk.Plugin
	// proc is the plugin's PID from its launch until go-plugin has reaped
	// it, which outlasts plugin: the host's reaper must leave it alone
	// until then.
	proc int
	// stuck says why the plugin was killed as stuck, until it is up again.
	stuck    string
	restarts int
	lastErr  error
}

// runtimeName names the plugin in metrics: its runtime's name, or the
// executable's name if it never came up.
func (s *supervisor) runtimeName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.info.Name != "" {
		return s.info.Name
	}
	return s.fileName()
}

// fileName names the plugin before it has said which runtime it serves:
// its file's name in the plugin directory, or the built-in's name.
func (s *supervisor) fileName() string {
	if s.builtin != "" {
		return s.builtin
	}
	return filepath.Base(s.path)
}

func (s *supervisor) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// errFatal marks a failure that restarting will not mend.
var errFatal = errors.New("not restarting the plugin")

// errRefused marks a plugin refused by vet (and logged as such already).
var errRefused = fmt.Errorf("plugin refused: %w", errFatal)

func (s *supervisor) run(firstDone func()) {
	defer s.m.wg.Done()
	var once sync.Once
	ready := func() { once.Do(firstDone) }
	defer ready()
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		began := time.Now()
		err := s.serve(ready)
		ready()
		if s.m.ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.lastErr = err
		s.restarts++
		s.mu.Unlock()
		if errors.Is(err, errRefused) {
			return
		}
		if errors.Is(err, errFatal) {
			s.log.Error("plugin disabled", "path", s.path, "error", err)
			return
		}
		s.m.cfg.Metrics.PluginRestarted(s.runtimeName())
		if time.Since(began) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		s.log.Error("plugin stopped; restarting", "path", s.path, "error", err, "in", backoff)
		select {
		case <-s.m.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// serve launches the plugin once and forwards its events until it goes.
func (s *supervisor) serve(ready func()) error {
	m := s.m
	// Checked before every launch: the file may have changed since the
	// last one. A built-in is the host's own executable, vetted by
	// whoever started the host.
	var sum []byte
	var refusal string
	var err error
	if s.builtin == "" {
		sum, refusal, err = m.vet(s.path)
	}
	if err != nil {
		return err
	}
	if refusal != "" {
		s.mu.Lock()
		runtime := s.info.Name
		s.mu.Unlock()
		m.refuse(s.path, runtime, refusal)
		return fmt.Errorf("%s: %w", refusal, errRefused)
	}
	m.mu.Lock()
	m.launching++
	m.mu.Unlock()
	p, err := sdk.Launch(s.path, sdk.LaunchOptions{
		Logger:     s.log,
		Args:       s.args,
		Env:        append([]string{sdk.EnvLogLevel + "=" + m.cfg.LogLevel}, m.cfg.PluginEnv...),
		ExtraFiles: m.cfg.PluginFiles,
		SHA256:     sum,
		SocketDir:  m.cfg.SocketDir,
	})
	if err == nil {
		s.mu.Lock()
		s.proc = p.Pid()
		s.mu.Unlock()
	}
	m.mu.Lock()
	m.launching--
	m.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		p.Kill()
		s.mu.Lock()
		s.proc = 0
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithTimeout(m.ctx, initTimeout)
	info, err := p.Runtime.Init(ctx, sdk.Config{DataDir: m.cfg.DataDir, Settings: m.cfg.Settings})
	cancel()
	if err != nil {
		return fmt.Errorf("while initialising the plugin: %w", err)
	}
	if info.Name == "" {
		return fmt.Errorf("the plugin reports no runtime name: %w", errFatal)
	}
	if s.builtin != "" && info.Name != s.builtin {
		return fmt.Errorf("the built-in runtime %q reports the name %q: %w", s.builtin, info.Name, errFatal)
	}
	m.mu.Lock()
	if other := m.byName[info.Name]; other != nil && other != s {
		m.mu.Unlock()
		return fmt.Errorf("runtime %q is provided by %s already: %w", info.Name, other.path, errFatal)
	}
	m.byName[info.Name] = s
	m.mu.Unlock()

	watch, err := sdk.WatchEvents(m.ctx, p.Runtime)
	if err != nil {
		return fmt.Errorf("while subscribing to the plugin's events: %w", err)
	}
	s.mu.Lock()
	s.info = info
	s.plugin = p
	s.lastErr = nil
	s.mu.Unlock()
	s.log.Info("runtime plugin up", "runtime", info.Name, "version", info.Version, "pid", p.Pid())
	for _, w := range info.Warnings {
		s.log.Warn("runtime plugin warns", "runtime", info.Name, "warning", w)
	}
	ready()
	// Recovery runs beside the event stream: events that arrive meanwhile
	// are applied as they come.
	go m.obs.RuntimeUp(info.Name, p.Runtime)
	watch(func(st sdk.TaskStatus) { m.obs.Report(info.Name, st) })
	s.mu.Lock()
	s.plugin = nil
	stuck := s.stuck
	s.stuck = ""
	s.mu.Unlock()
	m.obs.RuntimeDown(info.Name)
	if m.ctx.Err() != nil {
		return nil
	}
	if stuck != "" {
		return fmt.Errorf("killed as stuck: %s", stuck)
	}
	return errors.New("the plugin's event stream ended (plugin exited?)")
}
