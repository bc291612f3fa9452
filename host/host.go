// Package host wires the task-executor host together: the task store, the
// runtime plugins, the controller that moves tasks through their lives, and
// the HTTP API.
package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/reconcile"
	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/sdk"
)

// Config is the host's configuration (see cmd/task-executor for the flags).
type Config struct {
	DataDir           string
	ListenAddr        string
	PluginDir         string
	SidecarMode       bool
	MainContainerName string
	ContainerMode     bool
	CRISocket         string
	ReconcileInterval time.Duration
	MaxConcurrent     int
	GracePeriod       time.Duration
	LogLevel          string
}

// Run serves until ctx ends, then shuts down: it stops accepting requests,
// finishes the ones in flight and the pending writes, and stops the
// plugins. Tasks keep running; the next start picks them up.
func Run(ctx context.Context, cfg Config, log hclog.Logger) error {
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

	mgr := dispatch.New(dispatch.Config{
		PluginDir: cfg.PluginDir,
		DataDir:   st.Root(),
		LogLevel:  cfg.LogLevel,
		Settings: map[string]string{
			sdk.SettingGracePeriod:       cfg.GracePeriod.String(),
			sdk.SettingMainContainerName: cfg.MainContainerName,
			sdk.SettingCRISocket:         cfg.CRISocket,
		},
	}, log.Named("dispatch"))
	reapCtx, stopReaping := context.WithCancel(context.Background())
	defer stopReaping()
	mgr.Reap(reapCtx)

	ctrl, err := reconcile.New(reconcile.Config{
		SidecarMode:       cfg.SidecarMode,
		ContainerMode:     cfg.ContainerMode,
		MaxConcurrent:     cfg.MaxConcurrent,
		GracePeriod:       cfg.GracePeriod,
		ReconcileInterval: cfg.ReconcileInterval,
	}, st, mgr, log.Named("reconcile"))
	if err != nil {
		return err
	}
	ctrl.Run()
	if err := mgr.Start(ctrl); err != nil {
		ctrl.Close()
		return err
	}

	srv := &http.Server{
		Handler:           api.Handler(ctrl, log.Named("api")),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(), "dataDir", st.Root(), "pluginDir", cfg.PluginDir)

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	log.Info("shutting down; tasks keep running")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("requests still in flight at shutdown", "error", serr)
	}
	ctrl.Close()
	mgr.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("while serving HTTP: %w", err)
	}
	return nil
}
