// Command task-executor is the task-executor host: it serves the HTTP API,
// keeps task state in the data directory and runs tasks through its runtime
// plugins. Every flag can also be set through the environment variable
// named beside it; a flag given on the command line wins.
//
// The executable is also each of its built-in runtime plugins
// ("task-executor plugin NAME", see builtins.go) and carries the shim, so
// that it alone is a complete executor.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/opensandbox/task-executor/host"
	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/internal/logsink"
	"github.com/opensandbox/task-executor/sdk"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == pluginCommand {
		os.Exit(servePlugin(os.Args[2:]))
	}
	cfg, logFormat, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "task-executor:", err)
		os.Exit(2)
	}
	// The log never waits for stderr (see internal/logsink): a reader that
	// falls behind costs log lines, counted, not the executor.
	sink := logsink.New(os.Stderr, logsink.DefaultMaxBytes)
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "task-executor",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		JSONFormat: logFormat == "json",
		Output:     sink,
	})
	sink.OnDrop(func(n uint64) {
		log.Warn("log lines were dropped: stderr did not take them in time", "dropped", n)
	})
	cfg.LogDropped = sink.Dropped
	os.Exit(run(cfg, log, sink))
}

// run runs the host until it is told to stop, and returns the exit code
// once its last log lines are out.
func run(cfg host.Config, log hclog.Logger, sink *logsink.Sink) int {
	defer sink.Flush(logFlushTimeout)
	if err := wireRuntimes(&cfg, log); err != nil {
		log.Error("exiting", "error", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := host.Run(ctx, cfg, log); err != nil {
		log.Error("exiting", "error", err)
		return 1
	}
	return 0
}

// logFlushTimeout bounds how long an exiting host waits for stderr to take
// its last log lines.
const logFlushTimeout = 5 * time.Second

// wireRuntimes gives the host the built-in runtimes and the shim every
// plugin is to use: the one in this executable, unless the operator names
// another with $TASK_EXECUTOR_SHIM.
func wireRuntimes(cfg *host.Config, log hclog.Logger) error {
	b, err := builtinPlugins()
	if err != nil {
		return err
	}
	cfg.Builtins = b
	if os.Getenv(envShim) != "" {
		log.Info("runtimes use the shim $TASK_EXECUTOR_SHIM names", "shim", os.Getenv(envShim))
		return nil
	}
	f, err := shimFile()
	if err != nil {
		// The runtimes then look for it on disk, and say so if they find none.
		log.Warn("cannot use the shim in this executable", "error", err)
		return nil
	}
	if f != nil {
		// Descriptor 4 in every plugin (see sdk.LaunchOptions.ExtraFiles).
		cfg.PluginFiles = []*os.File{f}
		cfg.PluginEnv = []string{envShim + "=/proc/self/fd/4"}
	}
	return nil
}

// envOf maps each flag to its environment variable.
var envOf = map[string]string{
	"data-dir":            "DATA_DIR",
	"listen-addr":         "LISTEN_ADDR",
	"enable-sidecar-mode": "ENABLE_SIDECAR_MODE",
	"main-container-name": "MAIN_CONTAINER_NAME",
	"allow-sidecar-tasks-more-privileged-than-main": "ALLOW_SIDECAR_TASKS_MORE_PRIVILEGED_THAN_MAIN",
	"enable-container-mode":                         "ENABLE_CONTAINER_MODE",
	"cri-socket":                                    "CRI_SOCKET",
	"pod-uid":                                       "POD_UID",
	"allowed-host-path":                             "ALLOWED_HOST_PATHS",
	"reconcile-interval":                            "RECONCILE_INTERVAL",
	"plugin-dir":                                    "PLUGIN_DIR",
	"default-runtime":                               "DEFAULT_RUNTIMES",
	"log-level":                                     "LOG_LEVEL",
	"log-format":                                    "LOG_FORMAT",
	"max-concurrent-tasks":                          "MAX_CONCURRENT_TASKS",
	"grace-period":                                  "GRACE_PERIOD",
	"max-tasks":                                     "MAX_TASKS",
	"auth-token-file":                               "AUTH_TOKEN_FILE",
	"tls-cert-file":                                 "TLS_CERT_FILE",
	"tls-key-file":                                  "TLS_KEY_FILE",
	"tls-client-ca-file":                            "TLS_CLIENT_CA_FILE",
	"plugin-checksums":                              "PLUGIN_CHECKSUMS",
	"volume":                                        "VOLUMES",
	"max-task-log-bytes":                            "MAX_TASK_LOG_BYTES",
	"max-connections":                               "MAX_CONNECTIONS",
	"max-spec-bytes":                                "MAX_SPEC_BYTES",
	"task-cgroups":                                  "TASK_CGROUPS",
	"cgroup-parent":                                 "CGROUP_PARENT",
	"default-task-cpu":                              "DEFAULT_TASK_CPU",
	"default-task-memory":                           "DEFAULT_TASK_MEMORY",
	"watch-history":                                 "WATCH_HISTORY",
	"watch-buffer-bytes":                            "WATCH_BUFFER_BYTES",
	"watch-bookmark-interval":                       "WATCH_BOOKMARK_INTERVAL",
}

func parseFlags(args []string) (host.Config, string, error) {
	var cfg host.Config
	var logFormat string
	var sec securityFiles
	fs := flag.NewFlagSet("task-executor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.DataDir, "data-dir", "/var/lib/sandbox/tasks", "directory for task state and output")
	fs.StringVar(&cfg.ListenAddr, "listen-addr", "0.0.0.0:5758", "address of the HTTP API")
	fs.BoolVar(&cfg.SidecarMode, "enable-sidecar-mode", false, "run process tasks inside the main container (nsenter runtime)")
	fs.StringVar(&cfg.MainContainerName, "main-container-name", "main", "sidecar mode: the main container, found by SANDBOX_MAIN_CONTAINER=<name> in a process's environment")
	fs.BoolVar(&cfg.SidecarMorePrivileged, "allow-sidecar-tasks-more-privileged-than-main", false, "sidecar mode: run tasks even where the executor cannot confine them as the main container is (its cgroup, seccomp filter, user namespace); they may then do what main cannot")
	fs.BoolVar(&cfg.ContainerMode, "enable-container-mode", false, "accept container tasks (cri runtime)")
	fs.StringVar(&cfg.CRISocket, "cri-socket", "/var/run/containerd/containerd.sock", "CRI runtime socket for container tasks")
	fs.StringVar(&cfg.PodUID, "pod-uid", "", "container mode: the UID of the executor's own pod (downward API metadata.uid); container tasks then run in its sandbox, beside the node's kubelet, instead of in sandboxes of their own")
	cfg.Volumes = map[string]string{}
	cfg.DefaultRuntimes = map[sdk.Kind]string{}
	fs.Var(volumeFlag(cfg.Volumes), "volume", "NAME=HOSTPATH: a host directory every container task may mount by NAME (repeatable; the variable takes NAME=PATH,NAME=PATH)")
	fs.Var((*pathsFlag)(&cfg.AllowedHostPaths), "allowed-host-path", "PREFIX: a container task's hostPath volume must be this directory or below it (repeatable; the variable takes PREFIX,PREFIX); none by default, so no hostPath volume is allowed")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", tasks.DefaultReconcileInterval, "how often to compare the task table with what the runtimes list (a safety net: status changes are pushed)")
	fs.Var(defaultRuntimeFlag(cfg.DefaultRuntimes), "default-runtime", "KIND=NAME: tasks of KIND (process or container) whose spec names no runtime run on runtime NAME, a built-in one or a plugin's (repeatable; the variable takes KIND=NAME,KIND=NAME); by default process tasks run on process (nsenter in sidecar mode) and container tasks on cri")
	fs.StringVar(&cfg.PluginDir, "plugin-dir", "", "directory of third-party runtime plugin executables, which add runtimes or replace built-in ones by name (none by default)")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	fs.IntVar(&cfg.MaxConcurrent, "max-concurrent-tasks", 0, "tasks allowed to run at once (0: no cap); the others wait as Queued")
	fs.DurationVar(&cfg.GracePeriod, "grace-period", 10*time.Second, "default time between SIGTERM and SIGKILL when a task is stopped")
	logCap := byteSize(100 << 20)
	fs.Var(&logCap, "max-task-log-bytes", "cap on what each of a task's output streams keeps on disk, e.g. 100Mi (0: none); older output is rotated out")
	fs.IntVar(&cfg.MaxTasks, "max-tasks", 10000, "tasks kept at once, finished ones included (beyond: 429); also the most one setTasks may list")
	specCap := byteSize(32 << 10)
	fs.Var(&specCap, "max-spec-bytes", "largest spec a task may have, as JSON, e.g. 32Ki (beyond: 413); with --max-tasks it bounds the memory specs take")
	fs.StringVar(&cfg.TaskCgroups, "task-cgroups", "auto", "a cgroup per process task, for its limits, usage and the kill of all it started: auto (where the executor can make them; it says so at start where it cannot, and tasks then run without limits), required (a runtime that cannot make them does not start) or off")
	fs.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "cgroup under which task cgroups are made, as a path from each hierarchy's root (default: the executor's own cgroup)")
	fs.StringVar(&cfg.DefaultTaskCPU, "default-task-cpu", "", "CPU limit of a process task that sets none, a Kubernetes quantity (e.g. 500m); none by default")
	fs.StringVar(&cfg.DefaultTaskMemory, "default-task-memory", "", "memory limit of a process task that sets none, a Kubernetes quantity (e.g. 512Mi); none by default")
	fs.IntVar(&cfg.WatchHistory, "watch-history", tasks.DefaultHistory, "changes kept for watches to resume from (GET /getTasks?watch=true&resourceVersion=); older ones answer 410 and the client lists again")
	watchBuf := byteSize(api.DefaultWatchBuffer)
	fs.Var(&watchBuf, "watch-buffer-bytes", "events a watch may hold that its client has not read, e.g. 1Mi; a watch past it ends with an ERROR event (503) and its client resumes")
	fs.DurationVar(&cfg.WatchBookmark, "watch-bookmark-interval", api.DefaultBookmark, "how long a watch stays idle before a BOOKMARK event keeps it alive")
	fs.IntVar(&cfg.MaxConnections, "max-connections", 2048, "API connections held open at once; at the cap the longest idle one is closed, or the new one refused with a 503 if none is idle")
	fs.StringVar(&sec.authToken, "auth-token-file", "", "file holding the bearer token every endpoint but GET /health requires")
	fs.StringVar(&sec.tlsCert, "tls-cert-file", "", "PEM certificate for serving HTTPS (with --tls-key-file)")
	fs.StringVar(&sec.tlsKey, "tls-key-file", "", "PEM private key of --tls-cert-file")
	fs.StringVar(&sec.tlsClientCA, "tls-client-ca-file", "", "PEM CA bundle: require client certificates signed by it (mutual TLS)")
	fs.StringVar(&sec.pluginChecksums, "plugin-checksums", "", "sha256sum-style file pinning each plugin's SHA-256; unlisted or different plugins are refused")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Fprintln(os.Stdout, "Usage: task-executor [flags]  (each flag also reads the environment variable in brackets)")
			fs.VisitAll(func(f *flag.Flag) {
				fmt.Fprintf(os.Stdout, "  --%s [%s] (default %q)\n      %s\n", f.Name, envOf[f.Name], f.DefValue, f.Usage)
			})
		}
		return cfg, "", err
	}
	if fs.NArg() > 0 {
		return cfg, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := envOf[f.Name]
		v, ok := os.LookupEnv(env)
		if set[f.Name] || !ok || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("invalid value %q for %s: %v", v, env, err)
		}
	})
	if envErr != nil {
		return cfg, "", envErr
	}
	if cfg.SidecarMode && cfg.DefaultRuntimes[sdk.KindProcess] == "process" {
		return cfg, "", errors.New("invalid --default-runtime process=process: sidecar mode turns the process runtime off (it would run tasks in the executor's own container, with its privileges)")
	}
	cfg.MaxTaskLogBytes = int64(logCap)
	cfg.WatchBuffer = int(watchBuf)
	cfg.MaxSpecBytes = int(specCap)
	cfg.Downward = downward(cfg.PodUID)
	if err := check(cfg, logFormat); err != nil {
		return cfg, "", err
	}
	return cfg, logFormat, sec.load(&cfg)
}

// securityFiles are the flags naming files that are read at start.
type securityFiles struct {
	authToken, tlsCert, tlsKey, tlsClientCA, pluginChecksums string
}

// load reads the files into cfg, so that a missing or bad one stops the
// start with one line, as a bad flag does.
func (sec securityFiles) load(cfg *host.Config) error {
	if sec.authToken != "" {
		tok, err := host.ReadToken(sec.authToken)
		if err != nil {
			return fmt.Errorf("--auth-token-file: %w", err)
		}
		cfg.AuthToken = tok
	}
	if (sec.tlsCert == "") != (sec.tlsKey == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together: give both or neither")
	}
	if sec.tlsClientCA != "" && sec.tlsCert == "" {
		return errors.New("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
	}
	if sec.tlsCert != "" {
		tc, err := host.LoadTLS(sec.tlsCert, sec.tlsKey, sec.tlsClientCA)
		if err != nil {
			return err
		}
		cfg.TLS = tc
	}
	if sec.pluginChecksums != "" {
		sums, err := dispatch.LoadChecksums(sec.pluginChecksums)
		if err != nil {
			return fmt.Errorf("--plugin-checksums: %w", err)
		}
		cfg.PluginChecksums = sums
	}
	return nil
}

func check(cfg host.Config, logFormat string) error {
	switch strings.ToLower(cfg.LogLevel) {
	case "trace", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("invalid --log-level %q: want trace, debug, info, warn or error", cfg.LogLevel)
	}
	if logFormat != "text" && logFormat != "json" {
		return fmt.Errorf("invalid --log-format %q: want text or json", logFormat)
	}
	if _, _, err := net.SplitHostPort(cfg.ListenAddr); err != nil {
		return fmt.Errorf("invalid --listen-addr %q: %v", cfg.ListenAddr, err)
	}
	if cfg.WatchHistory < 1 || cfg.WatchHistory > 10_000_000 {
		return fmt.Errorf("invalid --watch-history %d: must be from 1 to 10000000", cfg.WatchHistory)
	}
	if cfg.WatchBuffer < 4<<10 || cfg.WatchBookmark <= 0 {
		return fmt.Errorf("invalid --watch-buffer-bytes %d or --watch-bookmark-interval %s: the buffer must be at least 4Ki, the interval positive", cfg.WatchBuffer, cfg.WatchBookmark)
	}
	if cfg.ReconcileInterval <= 0 {
		return fmt.Errorf("invalid --reconcile-interval %s: must be positive", cfg.ReconcileInterval)
	}
	if cfg.MaxConcurrent < 0 {
		return fmt.Errorf("invalid --max-concurrent-tasks %d: must be 0 (no cap) or more", cfg.MaxConcurrent)
	}
	if cfg.MaxSpecBytes < 1 || cfg.MaxSpecBytes > 1<<20 {
		return fmt.Errorf("invalid --max-spec-bytes %d: must be from 1 to 1Mi (a request's largest body)", cfg.MaxSpecBytes)
	}
	if cfg.MaxConnections < 1 {
		return fmt.Errorf("invalid --max-connections %d: must be 1 or more", cfg.MaxConnections)
	}
	if cfg.MaxTasks < 1 {
		return fmt.Errorf("invalid --max-tasks %d: must be 1 or more", cfg.MaxTasks)
	}
	if cfg.GracePeriod < 0 {
		return fmt.Errorf("invalid --grace-period %s: must not be negative", cfg.GracePeriod)
	}
	switch cfg.TaskCgroups {
	case "auto", "required", "off":
	default:
		return fmt.Errorf("invalid --task-cgroups %q: want auto, required or off", cfg.TaskCgroups)
	}
	if cfg.CgroupParent != "" && (!path.IsAbs(cfg.CgroupParent) || path.Clean(cfg.CgroupParent) != cfg.CgroupParent || cfg.CgroupParent == "/") {
		return fmt.Errorf("invalid --cgroup-parent %q: want a clean absolute path below the root, e.g. /task-executor", cfg.CgroupParent)
	}
	for flagName, v := range map[string]string{"default-task-cpu": cfg.DefaultTaskCPU, "default-task-memory": cfg.DefaultTaskMemory} {
		if v == "" {
			continue
		}
		if q, err := resource.ParseQuantity(v); err != nil || q.Sign() <= 0 {
			return fmt.Errorf("invalid --%s %q: want a positive Kubernetes quantity", flagName, v)
		}
	}
	if cfg.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	return nil
}

// downwardEnv maps the environment variables a pod's manifest sets from
// the downward API to the field paths a task's valueFrom.fieldRef names.
var downwardEnv = map[string]string{
	"POD_NAME":            "metadata.name",
	"POD_NAMESPACE":       "metadata.namespace",
	"POD_UID":             "metadata.uid",
	"POD_IP":              "status.podIP",
	"HOST_IP":             "status.hostIP",
	"NODE_NAME":           "spec.nodeName",
	"POD_SERVICE_ACCOUNT": "spec.serviceAccountName",
}

// downward returns the fields of the executor's pod its environment gives
// (and --pod-uid).
func downward(podUID string) map[string]string {
	d := map[string]string{}
	for env, path := range downwardEnv {
		if v, ok := os.LookupEnv(env); ok {
			d[path] = v
		}
	}
	if podUID != "" {
		d["metadata.uid"] = podUID
	}
	return d
}

// pathsFlag collects absolute paths; one value may also hold several,
// comma-separated, as the environment variable does.
type pathsFlag []string

func (p *pathsFlag) String() string { return strings.Join(*p, ",") }

func (p *pathsFlag) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if !filepath.IsAbs(item) {
			return fmt.Errorf("%q is not an absolute path", item)
		}
		*p = append(*p, filepath.Clean(item))
	}
	return nil
}

// defaultRuntimeFlag collects --default-runtime KIND=NAME; one value may
// also hold several, comma-separated, as the environment variable does.
type defaultRuntimeFlag map[sdk.Kind]string

func (d defaultRuntimeFlag) String() string {
	var pairs []string
	for k, n := range d {
		pairs = append(pairs, string(k)+"="+n)
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

func (d defaultRuntimeFlag) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		kind, name, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || name == "" {
			return fmt.Errorf("%q: want KIND=NAME", item)
		}
		k := sdk.Kind(kind)
		if k != sdk.KindProcess && k != sdk.KindContainer {
			return fmt.Errorf("%q: unknown kind %q (want process or container)", item, kind)
		}
		if strings.ContainsAny(name, "/ \t") {
			return fmt.Errorf("%q: %q is not a runtime name", item, name)
		}
		if had, dup := d[k]; dup && had != name {
			return fmt.Errorf("%q: the default runtime of %s tasks is given twice (%s and %s)", item, kind, had, name)
		}
		d[k] = name
	}
	return nil
}

// volumeFlag collects --volume NAME=HOSTPATH; one value may also hold
// several, comma-separated, as the environment variable does.
type volumeFlag map[string]string

func (v volumeFlag) String() string {
	names := make([]string, 0, len(v))
	for n, p := range v {
		names = append(names, n+"="+p)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func (v volumeFlag) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		name, path, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("%q is not NAME=HOSTPATH", item)
		}
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			return fmt.Errorf("volume name %q: %s", name, strings.Join(errs, "; "))
		}
		if !filepath.IsAbs(path) {
			return fmt.Errorf("volume %s: %q is not an absolute path", name, path)
		}
		if _, dup := v[name]; dup {
			return fmt.Errorf("volume %s is given twice", name)
		}
		v[name] = filepath.Clean(path)
	}
	return nil
}

// byteSize is a flag holding a byte count, written as a Kubernetes
// quantity (100Mi, 1G, 4096).
type byteSize int64

func (b *byteSize) String() string {
	return resource.NewQuantity(int64(*b), resource.BinarySI).String()
}

func (b *byteSize) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return fmt.Errorf("%q is not a byte count (e.g. 100Mi): %v", s, err)
	}
	if q.Sign() < 0 {
		return fmt.Errorf("%q is negative", s)
	}
	*b = byteSize(q.Value())
	return nil
}
