package sdk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
)

// sameStatus compares statuses the way Kubernetes does: times by instant,
// ignoring location and monotonic readings, which the wire cannot carry.
func sameStatus(a, b TaskStatus) bool { return equality.Semantic.DeepEqual(a, b) }

func TestStatusRoundTrip(t *testing.T) {
	// Nanosecond precision must survive: the wire carries Unix nanoseconds.
	started := time.Date(2024, 5, 17, 10, 11, 12, 123456789, time.UTC)
	finished := started.Add(90*time.Second + 987*time.Nanosecond)
	cases := []struct {
		name string
		in   TaskStatus
	}{
		{"waiting", TaskStatus{Name: "w", State: Waiting(ReasonQueued, "slot 3 of 4")}},
		{"waiting without reason", TaskStatus{Name: "w", State: Waiting("", "")}},
		{"running", TaskStatus{Name: "r", State: Running(started)}},
		{"running, now", TaskStatus{Name: "r", State: Running(time.Now())}},
		{"running, zero start", TaskStatus{Name: "r", State: Running(time.Time{})}},
		{"succeeded", TaskStatus{Name: "t", State: Terminated(0, 0, "", "", started, finished)}},
		{"failed with message", TaskStatus{Name: "t", State: Terminated(3, 0, "", "exit status 3", started, finished)}},
		{"killed by signal", TaskStatus{Name: "t", State: Terminated(137, 9, ReasonFailed, "killed by signal 9", started, finished)}},
		{"start error, zero start", TaskStatus{Name: "t", State: Terminated(127, 0, ReasonStartError, "not found", time.Time{}, finished)}},
		{"both times zero", TaskStatus{Name: "t", State: Terminated(137, 0, ReasonStatusUnknown, "", time.Time{}, time.Time{})}},
		{"negative exit code", TaskStatus{Name: "t", State: Terminated(-1, 0, ReasonFailed, "", started, finished)}},
		{"no state", TaskStatus{Name: "n"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := statusFromProto(statusToProto(tc.in))
			if !sameStatus(got, tc.in) {
				t.Fatalf("round trip changed the status:\n got  %+v\n want %+v", got.State, tc.in.State)
			}
			// Zero times must stay zero, not become the Unix epoch.
			if term := got.State.Terminated; term != nil {
				if term.StartedAt.IsZero() != tc.in.State.Terminated.StartedAt.IsZero() ||
					term.FinishedAt.IsZero() != tc.in.State.Terminated.FinishedAt.IsZero() {
					t.Fatalf("zero-ness of times changed: got %v/%v", term.StartedAt, term.FinishedAt)
				}
			}
			if run := got.State.Running; run != nil && run.StartedAt.IsZero() != tc.in.State.Running.StartedAt.IsZero() {
				t.Fatalf("zero-ness of the start time changed: got %v", run.StartedAt)
			}
		})
	}
}

func TestStatusesRoundTripKeepsOrder(t *testing.T) {
	in := []TaskStatus{
		{Name: "c", State: Running(time.Unix(100, 5))},
		{Name: "a", State: Waiting(ReasonInitialized, "")},
		{Name: "b", State: Terminated(1, 0, "", "", time.Unix(1, 0), time.Unix(2, 0))},
	}
	got := statusesFromProto(statusesToProto(in))
	if len(got) != len(in) {
		t.Fatalf("got %d statuses, want %d", len(got), len(in))
	}
	for i := range in {
		if !sameStatus(got[i], in[i]) {
			t.Fatalf("status %d: got %+v, want %+v", i, got[i], in[i])
		}
	}
	if got := statusesFromProto(statusesToProto(nil)); len(got) != 0 {
		t.Fatalf("empty list became %v", got)
	}
}

func TestTaskRoundTrip(t *testing.T) {
	timeout := int64(30)
	in := Task{
		Name: "job-1",
		Dir:  "/var/lib/te/tasks/job-1",
		Spec: TaskSpec{
			Runtime: "process",
			Process: &ProcessSpec{
				Command:        []string{"/bin/sh", "-c"},
				Args:           []string{"echo $X"},
				Env:            []corev1.EnvVar{{Name: "X", Value: "a b"}},
				WorkingDir:     "/tmp",
				TimeoutSeconds: &timeout,
			},
		},
	}
	p, err := taskToProto(in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := taskFromProto(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("got %+v, want %+v", got, in)
	}
}

func TestErrorRoundTrip(t *testing.T) {
	kinds := []error{ErrNotFound, ErrInvalidSpec, ErrUnavailable, context.Canceled, context.DeadlineExceeded}
	cases := []struct {
		name string
		err  error
		kind error // nil: matches none of kinds
		code codes.Code
	}{
		{"not found", fmt.Errorf("task %q: %w", "x", ErrNotFound), ErrNotFound, codes.NotFound},
		{"invalid spec", fmt.Errorf("volume %q is not defined: %w", "data", ErrInvalidSpec), ErrInvalidSpec, codes.InvalidArgument},
		{"unavailable", fmt.Errorf("plugin exited: %w", ErrUnavailable), ErrUnavailable, codes.Unavailable},
		{"canceled", fmt.Errorf("while stopping: %w", context.Canceled), context.Canceled, codes.Canceled},
		{"deadline", fmt.Errorf("while stopping: %w", context.DeadlineExceeded), context.DeadlineExceeded, codes.DeadlineExceeded},
		{"bare sentinel", ErrNotFound, ErrNotFound, codes.NotFound},
		{"other", errors.New("disk on fire"), nil, codes.Unknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wire := toGRPCError(tc.err)
			if c := status.Code(wire); c != tc.code {
				t.Fatalf("gRPC code %v, want %v", c, tc.code)
			}
			got := fromGRPCError(wire)
			for _, k := range kinds {
				if is := errors.Is(got, k); is != (k == tc.kind) {
					t.Errorf("errors.Is(%q, %v) = %v", got, k, is)
				}
			}
			switch tc.kind {
			case ErrInvalidSpec, nil:
				// These messages reach clients as they were written.
				if got.Error() != tc.err.Error() {
					t.Errorf("message %q, want %q verbatim", got.Error(), tc.err.Error())
				}
			default:
				if msg := got.Error(); len(msg) < len(tc.err.Error()) || msg[:len(tc.err.Error())] != tc.err.Error() {
					t.Errorf("message %q does not start with the original %q", msg, tc.err.Error())
				}
			}
		})
	}
}

func TestErrorMappingEdges(t *testing.T) {
	if toGRPCError(nil) != nil {
		t.Error("toGRPCError(nil) is not nil")
	}
	if fromGRPCError(nil) != nil {
		t.Error("fromGRPCError(nil) is not nil")
	}
	// An error that is not a gRPC status (say, from encoding the request)
	// must come back unchanged.
	plain := fmt.Errorf("while encoding: %w", ErrNotFound)
	if got := fromGRPCError(plain); got != plain {
		t.Errorf("fromGRPCError changed a non-status error: %v", got)
	}
	// Not found takes precedence when an error wraps several kinds, as the
	// host answers 404 for it.
	both := fmt.Errorf("%w: %w", ErrNotFound, ErrInvalidSpec)
	if c := status.Code(toGRPCError(both)); c != codes.NotFound {
		t.Errorf("code %v for an error wrapping both not-found and invalid-spec", c)
	}
}

// fakeRuntime records what reaches it and answers with canned values.
type fakeRuntime struct {
	mu       sync.Mutex
	cfg      Config
	spec     TaskSpec
	started  Task
	stopName string
	stopWait time.Duration
	removed  string
	statusOf string
	tasks    []Task
	stopCtx  chan context.Context

	info        Info
	validateErr error
	startStatus TaskStatus
	statuses    map[string]TaskStatus
	list        []TaskStatus
	recovered   []TaskStatus

	events    chan TaskStatus
	eventsErr error
	eventsCtx chan context.Context
}

func (f *fakeRuntime) Init(_ context.Context, cfg Config) (Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = cfg
	return f.info, nil
}

func (f *fakeRuntime) Validate(_ context.Context, spec TaskSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spec = spec
	return f.validateErr
}

func (f *fakeRuntime) Start(_ context.Context, task Task) (TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = task
	return f.startStatus, nil
}

func (f *fakeRuntime) Stop(ctx context.Context, name string, grace time.Duration) error {
	f.mu.Lock()
	f.stopName, f.stopWait = name, grace
	f.mu.Unlock()
	if name == "slow" {
		// Hand the server-side context to the test, which checks that the
		// client's deadline reaches it.
		f.stopCtx <- ctx
		<-ctx.Done()
		return ctx.Err()
	}
	if _, ok := f.statuses[name]; !ok {
		return fmt.Errorf("task %q: %w", name, ErrNotFound)
	}
	return nil
}

func (f *fakeRuntime) Remove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = name
	return nil
}

func (f *fakeRuntime) Status(_ context.Context, name string) (TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusOf = name
	s, ok := f.statuses[name]
	if !ok {
		return TaskStatus{}, fmt.Errorf("task %q: %w", name, ErrNotFound)
	}
	return s, nil
}

func (f *fakeRuntime) List(context.Context) ([]TaskStatus, error) { return f.list, nil }

func (f *fakeRuntime) Recover(_ context.Context, tasks []Task) ([]TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks = tasks
	return f.recovered, nil
}

func (f *fakeRuntime) Events(ctx context.Context) (<-chan TaskStatus, error) {
	if f.eventsErr != nil {
		return nil, f.eventsErr
	}
	f.eventsCtx <- ctx
	return f.events, nil
}

// serveFake serves rt over a Unix socket through GRPCPlugin, as go-plugin
// would, and returns the host's side of it.
func serveFake(t *testing.T, rt Runtime) Runtime {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "rt.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	if err := (&GRPCPlugin{Impl: rt}).GRPCServer(nil, srv); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("gRPC server: %v", err)
		}
	})
	raw, err := (&GRPCPlugin{}).GRPCClient(t.Context(), nil, conn)
	if err != nil {
		t.Fatal(err)
	}
	client, ok := raw.(Runtime)
	if !ok {
		t.Fatalf("GRPCClient returned %T, not a Runtime", raw)
	}
	return client
}

func TestGRPCRoundTrip(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	timeout := int64(5)
	procTask := Task{Name: "p", Dir: "/data/tasks/p", Spec: TaskSpec{Process: &ProcessSpec{
		Command: []string{"sleep"}, Args: []string{"10"},
		Env:            []corev1.EnvVar{{Name: "A", Value: "1"}},
		TimeoutSeconds: &timeout,
	}}}
	ctrTask := Task{Name: "c", Dir: "/data/tasks/c", Spec: TaskSpec{
		Container: &corev1.Container{
			Name: "main", Image: "busybox", Command: []string{"true"},
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			}},
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
		},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
	}}
	fake := &fakeRuntime{
		info:        Info{Name: "fake", Version: "1.2.3", Kinds: []Kind{KindProcess, KindContainer}},
		validateErr: fmt.Errorf("volume \"data\" is mounted but not defined: %w", ErrInvalidSpec),
		startStatus: TaskStatus{Name: "p", State: Running(started)},
		statuses: map[string]TaskStatus{
			"p": {Name: "p", State: Terminated(2, 0, "", "boom", started, started.Add(time.Second))},
		},
		list: []TaskStatus{
			{Name: "z", State: Waiting(ReasonQueued, "")},
			{Name: "p", State: Running(started)},
			{Name: "a", State: Terminated(0, 0, "", "", started, started.Add(time.Minute))},
		},
		recovered: []TaskStatus{{Name: "p", State: Running(started)}},
		stopCtx:   make(chan context.Context, 1),
	}
	rt := serveFake(t, fake)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	t.Run("Init", func(t *testing.T) {
		cfg := Config{DataDir: "/data", Settings: map[string]string{SettingGracePeriod: "7s", SettingCRISocket: "/run/x.sock"}}
		info, err := rt.Init(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(info, fake.info) {
			t.Errorf("info %+v, want %+v", info, fake.info)
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if !reflect.DeepEqual(fake.cfg, cfg) {
			t.Errorf("runtime got config %+v, want %+v", fake.cfg, cfg)
		}
	})
	t.Run("Validate", func(t *testing.T) {
		err := rt.Validate(ctx, ctrTask.Spec)
		if !errors.Is(err, ErrInvalidSpec) {
			t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
		}
		if err.Error() != fake.validateErr.Error() {
			t.Errorf("message %q, want %q", err.Error(), fake.validateErr.Error())
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if !equality.Semantic.DeepEqual(fake.spec, ctrTask.Spec) {
			t.Errorf("runtime got spec %+v, want %+v", fake.spec, ctrTask.Spec)
		}
	})
	t.Run("Start", func(t *testing.T) {
		got, err := rt.Start(ctx, procTask)
		if err != nil {
			t.Fatal(err)
		}
		if !sameStatus(got, fake.startStatus) {
			t.Errorf("status %+v, want %+v", got, fake.startStatus)
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if !reflect.DeepEqual(fake.started, procTask) {
			t.Errorf("runtime got task %+v, want %+v", fake.started, procTask)
		}
	})
	t.Run("Stop", func(t *testing.T) {
		if err := rt.Stop(ctx, "p", 1500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		fake.mu.Lock()
		name, grace := fake.stopName, fake.stopWait
		fake.mu.Unlock()
		if name != "p" || grace != 1500*time.Millisecond {
			t.Errorf("runtime got Stop(%q, %v), want Stop(\"p\", 1.5s)", name, grace)
		}
		if err := rt.Stop(ctx, "unknown", 0); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stop of an unknown task: %v, want ErrNotFound", err)
		}
	})
	t.Run("Stop deadline", func(t *testing.T) {
		short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancelShort()
		errc := make(chan error, 1)
		go func() { errc <- rt.Stop(short, "slow", time.Second) }()
		var serverCtx context.Context
		select {
		case serverCtx = <-fake.stopCtx:
		case <-ctx.Done():
			t.Fatal("Stop never reached the runtime")
		}
		if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Stop past its deadline: %v, want context.DeadlineExceeded", err)
		}
		// The runtime must learn the caller gave up, or its Stop would run on.
		select {
		case <-serverCtx.Done():
		case <-ctx.Done():
			t.Error("the runtime's context did not end with the client's")
		}
	})
	t.Run("Remove", func(t *testing.T) {
		if err := rt.Remove(ctx, "p"); err != nil {
			t.Fatal(err)
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if fake.removed != "p" {
			t.Errorf("runtime removed %q, want p", fake.removed)
		}
	})
	t.Run("Status", func(t *testing.T) {
		got, err := rt.Status(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		if want := fake.statuses["p"]; !sameStatus(got, want) {
			t.Errorf("status %+v, want %+v", got, want)
		}
		if _, err := rt.Status(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Status of an unknown task: %v, want ErrNotFound", err)
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if fake.statusOf != "nope" {
			t.Errorf("runtime asked about %q, want nope", fake.statusOf)
		}
	})
	t.Run("List", func(t *testing.T) {
		got, err := rt.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(fake.list) {
			t.Fatalf("got %d statuses, want %d", len(got), len(fake.list))
		}
		for i := range got {
			if !sameStatus(got[i], fake.list[i]) {
				t.Errorf("status %d: %+v, want %+v", i, got[i], fake.list[i])
			}
		}
	})
	t.Run("Recover", func(t *testing.T) {
		in := []Task{procTask, ctrTask}
		got, err := rt.Recover(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || !sameStatus(got[0], fake.recovered[0]) {
			t.Errorf("statuses %+v, want %+v", got, fake.recovered)
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if !equality.Semantic.DeepEqual(fake.tasks, in) {
			t.Errorf("runtime got tasks %+v, want %+v", fake.tasks, in)
		}
	})
}

func TestGRPCEvents(t *testing.T) {
	events := func(ctx context.Context, rt Runtime) (func(func(TaskStatus)), error) {
		ch, err := rt.Events(ctx)
		if err != nil {
			return nil, err
		}
		return func(fn func(TaskStatus)) {
			for s := range ch {
				fn(s)
			}
		}, nil
	}
	for _, c := range []struct {
		name    string
		overRPC bool
		watch   func(context.Context, Runtime) (func(func(TaskStatus)), error)
	}{
		{"Events", true, events},
		{"WatchEvents", true, WatchEvents},
		{"WatchEvents of a runtime in process", false, WatchEvents},
	} {
		t.Run(c.name+" delivers in order and ends with the runtime's channel", func(t *testing.T) {
			fake := &fakeRuntime{events: make(chan TaskStatus), eventsCtx: make(chan context.Context, 1)}
			var rt Runtime = fake
			if c.overRPC {
				rt = serveFake(t, fake)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			watch, err := c.watch(ctx, rt)
			if err != nil {
				t.Fatal(err)
			}
			<-fake.eventsCtx
			want := []TaskStatus{
				{Name: "a", State: Running(time.Unix(10, 20))},
				{Name: "b", State: Waiting(ReasonQueued, "")},
				{Name: "a", State: Terminated(143, 15, ReasonTaskTimeout, "", time.Unix(10, 20), time.Unix(30, 0))},
			}
			go func() {
				for _, s := range want {
					fake.events <- s
				}
				close(fake.events)
			}()
			var got []TaskStatus
			watch(func(s TaskStatus) { got = append(got, s) })
			if ctx.Err() != nil {
				t.Fatal("the stream did not end when the runtime closed its channel")
			}
			if len(got) != len(want) {
				t.Fatalf("got %d events, want %d", len(got), len(want))
			}
			for i := range want {
				if !sameStatus(got[i], want[i]) {
					t.Errorf("event %d: %+v, want %+v", i, got[i], want[i])
				}
			}
		})
	}
	t.Run("ends when the host cancels", func(t *testing.T) {
		var pub Publisher
		fake := &fakeRuntime{eventsCtx: make(chan context.Context, 1)}
		rt := serveFake(t, &publishingRuntime{fakeRuntime: fake, pub: &pub})
		deadline, cancelDeadline := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancelDeadline()
		ctx, cancel := context.WithCancel(deadline)
		ch, err := rt.Events(ctx)
		if err != nil {
			t.Fatal(err)
		}
		serverCtx := <-fake.eventsCtx
		pub.Publish(TaskStatus{Name: "x", State: Waiting(ReasonInitialized, "")})
		select {
		case s := <-ch:
			if s.Name != "x" {
				t.Fatalf("got %q, want x", s.Name)
			}
		case <-deadline.Done():
			t.Fatal("no event delivered")
		}
		cancel()
		for range ch {
		}
		if deadline.Err() != nil {
			t.Fatal("the host's channel did not close after cancel")
		}
		select {
		case <-serverCtx.Done():
		case <-deadline.Done():
			t.Fatal("the runtime's Events context did not end with the host's")
		}
	})
	t.Run("runtime error closes the channel", func(t *testing.T) {
		fake := &fakeRuntime{eventsErr: fmt.Errorf("not ready: %w", ErrUnavailable)}
		rt := serveFake(t, fake)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		ch, err := rt.Events(ctx)
		if err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("error %v does not wrap ErrUnavailable", err)
			}
			return
		}
		for range ch {
		}
		if ctx.Err() != nil {
			t.Fatal("the channel stayed open although the runtime's Events failed")
		}
	})
}

// publishingRuntime serves Events from a Publisher, as real runtimes do.
type publishingRuntime struct {
	*fakeRuntime
	pub *Publisher
}

func (p *publishingRuntime) Events(ctx context.Context) (<-chan TaskStatus, error) {
	ch := p.pub.Subscribe(ctx)
	p.fakeRuntime.eventsCtx <- ctx
	return ch, nil
}
