// Package host wires the task-executor host together: the task store, the
// runtime plugins, the controller that moves tasks through their lives, and
// the HTTP API.
package host

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// Config is the host's configuration (see cmd/task-executor for the flags).
type Config struct {
	DataDir    string
	ListenAddr string
	// PluginDir holds third-party plugins ("": none).
	PluginDir string
	// Builtins are the runtimes the executable brings, and PluginEnv and
	// PluginFiles what every plugin is given (see dispatch.Config).
	Builtins          []dispatch.Builtin
	PluginEnv         []string
	PluginFiles       []*os.File
	SidecarMode       bool
	MainContainerName string
	// SidecarMorePrivileged lets sidecar tasks run where they cannot be
	// confined as the main container is.
	SidecarMorePrivileged bool
	ContainerMode         bool
	CRISocket             string
	// PodUID is the executor's own pod's, when it runs in one.
	PodUID            string
	ReconcileInterval time.Duration
	MaxConcurrent     int
	GracePeriod       time.Duration
	LogLevel          string
	// LogDropped, when set, counts the log lines dropped because stderr
	// did not take them (see internal/logsink), for the metrics.
	LogDropped func() uint64
	// MaxTasks caps the tasks kept at once; 0 means no cap.
	MaxTasks int
	// MaxConnections caps the API's open connections (see connLimit).
	MaxConnections int
	// MaxSpecBytes bounds a task's spec, as JSON.
	MaxSpecBytes int
	// WatchHistory, WatchBuffer and WatchBookmark tune watches (see
	// tasks.Config.History and api.WatchOptions).
	WatchHistory  int
	WatchBuffer   int
	WatchBookmark time.Duration
	// MaxTaskLogBytes caps what each output stream of a task keeps on disk;
	// 0 means no cap.
	MaxTaskLogBytes int64
	// TaskCgroups, CgroupParent, DefaultTaskCPU and DefaultTaskMemory are
	// passed to the runtimes (sdk.SettingTaskCgroups and the others).
	TaskCgroups, CgroupParent         string
	DefaultTaskCPU, DefaultTaskMemory string
	// AuthToken, when set, is the bearer token every endpoint but
	// GET /health requires.
	AuthToken string
	// TLS, when set, makes the API serve HTTPS (see LoadTLS).
	TLS *tls.Config
	// PluginChecksums, when not nil, pins each plugin's SHA-256 by file
	// name (see dispatch.LoadChecksums).
	PluginChecksums map[string][]byte
	// Downward are the fields of the executor's own pod a task's env may
	// name with valueFrom.fieldRef, by field path.
	Downward map[string]string
	// AllowedHostPaths are the node directories under which a container
	// task may mount a hostPath volume.
	AllowedHostPaths []string
	// Volumes are host directories offered to every container task by
	// name (--volume NAME=HOSTPATH).
	Volumes map[string]string
	// DefaultRuntimes are the operator's runtimes for tasks whose spec
	// names none, by kind (--default-runtime); see tasks.Config.
	DefaultRuntimes map[sdk.Kind]string
}

// recoveryWait bounds how long a start waits for the runtimes to say what
// became of their tasks before it serves anyway (a runtime whose Recover
// keeps failing must not keep the API down).
const recoveryWait = 10 * time.Second

// Run serves until ctx ends, then shuts down: it stops accepting requests,
// finishes the ones in flight and the pending writes, and stops the
// plugins. Tasks keep running; the next start picks them up.
func Run(ctx context.Context, cfg Config, log hclog.Logger) error {
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := store.Open(cfg.DataDir, log.Named("store"))
	if err != nil {
		return err
	}
	defer st.Close()
	// Bind first: a port in use should fail the start before anything else
	// happens.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("while listening on %s: %w", cfg.ListenAddr, err)
	}
	defer ln.Close()
	warnIfExposed(cfg, log)

	allowed, err := json.Marshal(append([]string{}, cfg.AllowedHostPaths...))
	if err != nil {
		return fmt.Errorf("while encoding the allowed host paths: %w", err)
	}
	volumes, err := json.Marshal(cfg.Volumes)
	if err != nil {
		return fmt.Errorf("while encoding the volumes: %w", err)
	}
	met := metrics.New()
	sockets := pluginSocketDir(st.Root(), log)
	if sockets != "" {
		// The plugins have removed their sockets by now (mgr.Close).
		defer os.Remove(sockets)
	}
	mgr := dispatch.New(dispatch.Config{
		PluginDir:   cfg.PluginDir,
		Builtins:    cfg.Builtins,
		PluginEnv:   cfg.PluginEnv,
		PluginFiles: cfg.PluginFiles,
		SocketDir:   sockets,
		DataDir:     st.Root(),
		Metrics:     met,
		LogLevel:    cfg.LogLevel,
		Checksums:   cfg.PluginChecksums,
		Disabled:    disabledPlugins(cfg),
		Settings: map[string]string{
			sdk.SettingGracePeriod:           cfg.GracePeriod.String(),
			sdk.SettingMainContainerName:     cfg.MainContainerName,
			sdk.SettingSidecarMorePrivileged: strconv.FormatBool(cfg.SidecarMorePrivileged),
			sdk.SettingPodUID:                cfg.PodUID,
			sdk.SettingCRISocket:             cfg.CRISocket,
			sdk.SettingVolumes:               string(volumes),
			sdk.SettingAllowedHostPaths:      string(allowed),
			sdk.SettingMaxLogBytes:           strconv.FormatInt(cfg.MaxTaskLogBytes, 10),
			sdk.SettingTaskCgroups:           cfg.TaskCgroups,
			sdk.SettingCgroupParent:          cfg.CgroupParent,
			sdk.SettingDefaultTaskCPU:        cfg.DefaultTaskCPU,
			sdk.SettingDefaultTaskMemory:     cfg.DefaultTaskMemory,
		},
	}, log.Named("dispatch"))
	reapCtx, stopReaping := context.WithCancel(context.Background())
	defer stopReaping()
	mgr.Reap(reapCtx)

	// Serve at once: /health answers from the first moment, the rest waits
	// (gate) while the runtimes start and recover their tasks.
	g := newGate()
	var handler http.Handler = g
	if mutualTLS(cfg.TLS) {
		handler = api.RequireClientCert(handler, log.Named("api"))
	}
	if cfg.AuthToken != "" {
		handler = api.RequireToken(cfg.AuthToken, handler, log.Named("api"))
	}
	// Closed when the shutdown begins: it ends the streams of logs?follow,
	// which the shutdown would otherwise wait for.
	stopStreams := make(chan struct{})
	limited := newConnLimit(ln, cfg.MaxConnections, log.Named("http"))
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         limited.track,
		ConnContext:       api.ConnContext,
		ErrorLog:          log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	srv.RegisterOnShutdown(func() { close(stopStreams) })
	served := make(chan error, 1)
	go func() {
		if cfg.TLS != nil {
			// TLS over the limit, so that the limit counts connections
			// before their handshake.
			served <- srv.Serve(tls.NewListener(limited, cfg.TLS))
			return
		}
		served <- srv.Serve(limited)
	}()
	log.Info("listening; serving /health, the rest once the runtimes have started", "addr", ln.Addr().String())
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if serr := srv.Shutdown(sctx); serr != nil {
			log.Warn("requests still in flight at shutdown", "error", serr)
		}
	}

	ctrlCfg := tasks.Config{
		SidecarMode:       cfg.SidecarMode,
		ContainerMode:     cfg.ContainerMode,
		MaxConcurrent:     cfg.MaxConcurrent,
		GracePeriod:       cfg.GracePeriod,
		ReconcileInterval: cfg.ReconcileInterval,
		Metrics:           met,
		MaxTasks:          cfg.MaxTasks,
		Downward:          cfg.Downward,
		Stuck:             mgr.Restart,
		DefaultRuntimes:   cfg.DefaultRuntimes,
		History:           cfg.WatchHistory,
	}
	ctrl, err := tasks.New(ctrlCfg, st, mgr, log.Named("tasks"))
	if err != nil {
		shutdown()
		return err
	}
	met.CountStatesWith(ctrl.CountStates)
	met.CountDroppedLogLinesWith(cfg.LogDropped)
	met.ReportUsageWith(usageOf(ctrl, mgr, log.Named("metrics")))
	ctrl.Run()
	if err := mgr.Start(ctrl); err != nil {
		shutdown()
		ctrl.Close()
		return err
	}
	if err := checkDefaultRuntimes(cfg, mgr); err != nil {
		shutdown()
		ctrl.Close()
		mgr.Close()
		return err
	}
	var up []string
	for _, rt := range mgr.Status() {
		if rt.Healthy {
			up = append(up, rt.Name)
		}
	}
	wctx, cancelWait := context.WithTimeout(ctx, recoveryWait)
	if !ctrl.AwaitRecovered(wctx, up) {
		log.Warn("serving before every runtime has said what became of its tasks; until then they show as recorded",
			"waited", recoveryWait.String())
	}
	cancelWait()
	g.open(api.Handler(ctrl, log.Named("api"),
		api.WithLogs(st, stopStreams), api.WithMetrics(met), api.WithRuntimes(mgr), api.WithMaxSpecBytes(cfg.MaxSpecBytes),
		api.WithDefaultRuntimes(ctrlCfg.DefaultRuntime),
		api.WithWatch(api.WatchOptions{Bookmark: cfg.WatchBookmark, BufferBytes: cfg.WatchBuffer}, stopStreams)))
	log.Info("serving", "addr", ln.Addr().String(), "dataDir", st.Root(), "pluginDir", cfg.PluginDir, "pluginSockets", sockets,
		"tls", cfg.TLS != nil, "auth", cfg.AuthToken != "")

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	log.Info("shutting down; tasks keep running")
	shutdown()
	ctrl.Close()
	mgr.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("while serving HTTP: %w", err)
	}
	return nil
}

// checkDefaultRuntimes refuses to start when an operator's default runtime
// (--default-runtime) is not there or does not run its kind of task: a
// typo would otherwise turn every task of that kind into a 400.
func checkDefaultRuntimes(cfg Config, mgr *dispatch.Manager) error {
	kinds := make([]sdk.Kind, 0, len(cfg.DefaultRuntimes))
	for k := range cfg.DefaultRuntimes {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, kind := range kinds {
		name := cfg.DefaultRuntimes[kind]
		if why, off := disabledPlugins(cfg)[name]; off {
			return fmt.Errorf("--default-runtime %s=%s: that runtime is off: %s", kind, name, why)
		}
		if why, refused := mgr.Refused()[name]; refused {
			return fmt.Errorf("--default-runtime %s=%s: its plugin was refused: %s", kind, name, why)
		}
		var names []string
		found := false
		for _, rt := range mgr.Status() {
			rtName := rt.Name
			if rtName == "" {
				rtName = filepath.Base(rt.Path) // not up yet: named as its file
			}
			names = append(names, rtName)
			if rtName != name {
				continue
			}
			found = true
			if rt.Healthy && !slices.Contains(rt.Kinds, kind) {
				return fmt.Errorf("--default-runtime %s=%s: that runtime runs %v tasks, not %s ones", kind, name, rt.Kinds, kind)
			}
		}
		if !found {
			slices.Sort(names)
			return fmt.Errorf("--default-runtime %s=%s: no such runtime (installed: %v)", kind, name, names)
		}
	}
	return nil
}

// disabledPlugins are the built-in plugins the configuration turns off.
func disabledPlugins(cfg Config) map[string]string {
	off := map[string]string{}
	if !cfg.ContainerMode {
		off["cri"] = "container mode is off (--enable-container-mode)"
	}
	if !cfg.SidecarMode {
		off["nsenter"] = "sidecar mode is off (--enable-sidecar-mode)"
	}
	if cfg.SidecarMode {
		// Any caller of the API, a task in the main container included,
		// could otherwise run a process with the executor's privileges.
		off["process"] = "sidecar mode runs process tasks in the main container; the process runtime would run them in the executor's own container, with its privileges"
	}
	return off
}
