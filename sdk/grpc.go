package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opensandbox/task-executor/sdk/runtimepb"
)

// maxMessageBytes bounds one gRPC message. Recover carries the specs of
// every unfinished task at once, so the default 4 MiB is too small for a
// host with thousands of tasks.
const maxMessageBytes = 256 << 20

// GRPCPlugin is the go-plugin glue for Runtime. Plugins get it through Serve
// and the host through Launch; neither needs to use it directly.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the runtime served, on the plugin's side.
	Impl Runtime
}

// GRPCServer registers the runtime on the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	runtimepb.RegisterRuntimeServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns the host's Runtime for a connected plugin.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &grpcClient{client: runtimepb.NewRuntimeClient(c)}, nil
}

// grpcServer adapts a Runtime to the generated gRPC server interface.
type grpcServer struct {
	runtimepb.UnimplementedRuntimeServer
	impl Runtime
}

func (s *grpcServer) Init(ctx context.Context, req *runtimepb.InitRequest) (*runtimepb.InitResponse, error) {
	info, err := s.impl.Init(ctx, Config{DataDir: req.GetDataDir(), Settings: req.GetSettings()})
	if err != nil {
		return nil, toGRPCError(err)
	}
	kinds := make([]string, len(info.Kinds))
	for i, k := range info.Kinds {
		kinds[i] = string(k)
	}
	return &runtimepb.InitResponse{Name: info.Name, Version: info.Version, Kinds: kinds, NoValidate: info.NoValidate, Warnings: info.Warnings, RuntimeOptions: info.RuntimeOptions}, nil
}

func (s *grpcServer) Validate(ctx context.Context, req *runtimepb.ValidateRequest) (*runtimepb.ValidateResponse, error) {
	var spec TaskSpec
	if err := json.Unmarshal(req.GetSpecJson(), &spec); err != nil {
		return nil, toGRPCError(fmt.Errorf("while decoding the spec: %v: %w", err, ErrInvalidSpec))
	}
	return &runtimepb.ValidateResponse{}, toGRPCError(s.impl.Validate(ctx, spec))
}

func (s *grpcServer) Start(ctx context.Context, req *runtimepb.StartRequest) (*runtimepb.StartResponse, error) {
	task, err := taskFromProto(req.GetTask())
	if err != nil {
		return nil, toGRPCError(fmt.Errorf("%v: %w", err, ErrInvalidSpec))
	}
	st, err := s.impl.Start(ctx, task)
	if err != nil {
		return nil, toGRPCError(err)
	}
	return &runtimepb.StartResponse{Status: statusToProto(st)}, nil
}

func (s *grpcServer) Stop(ctx context.Context, req *runtimepb.StopRequest) (*runtimepb.StopResponse, error) {
	err := s.impl.Stop(ctx, req.GetName(), time.Duration(req.GetGracePeriodNanos()))
	return &runtimepb.StopResponse{}, toGRPCError(err)
}

func (s *grpcServer) Remove(ctx context.Context, req *runtimepb.RemoveRequest) (*runtimepb.RemoveResponse, error) {
	return &runtimepb.RemoveResponse{}, toGRPCError(s.impl.Remove(ctx, req.GetName()))
}

func (s *grpcServer) Status(ctx context.Context, req *runtimepb.StatusRequest) (*runtimepb.StatusResponse, error) {
	st, err := s.impl.Status(ctx, req.GetName())
	if err != nil {
		return nil, toGRPCError(err)
	}
	return &runtimepb.StatusResponse{Status: statusToProto(st)}, nil
}

func (s *grpcServer) List(ctx context.Context, _ *runtimepb.ListRequest) (*runtimepb.ListResponse, error) {
	sts, err := s.impl.List(ctx)
	if err != nil {
		return nil, toGRPCError(err)
	}
	return &runtimepb.ListResponse{Statuses: statusesToProto(sts)}, nil
}

func (s *grpcServer) Recover(ctx context.Context, req *runtimepb.RecoverRequest) (*runtimepb.RecoverResponse, error) {
	tasks := make([]Task, 0, len(req.GetTasks()))
	for _, pt := range req.GetTasks() {
		t, err := taskFromProto(pt)
		if err != nil {
			return nil, toGRPCError(fmt.Errorf("%v: %w", err, ErrInvalidSpec))
		}
		tasks = append(tasks, t)
	}
	sts, err := s.impl.Recover(ctx, tasks)
	if err != nil {
		return nil, toGRPCError(err)
	}
	return &runtimepb.RecoverResponse{Statuses: statusesToProto(sts)}, nil
}

func (s *grpcServer) Events(_ *runtimepb.EventsRequest, stream runtimepb.Runtime_EventsServer) error {
	ch, err := s.impl.Events(stream.Context())
	if err != nil {
		return toGRPCError(err)
	}
	for st := range ch {
		if err := stream.Send(statusToProto(st)); err != nil {
			return err
		}
	}
	return nil
}

func (s *grpcServer) Usage(ctx context.Context, req *runtimepb.UsageRequest) (*runtimepb.UsageResponse, error) {
	r, ok := s.impl.(UsageReporter)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "the runtime reports no usage")
	}
	us, err := r.Usage(ctx, req.GetNames())
	if err != nil {
		return nil, toGRPCError(err)
	}
	resp := &runtimepb.UsageResponse{Usage: make([]*runtimepb.TaskUsage, len(us))}
	for i, u := range us {
		resp.Usage[i] = &runtimepb.TaskUsage{Name: u.Name, CpuSeconds: u.CPUSeconds, MemoryBytes: u.MemoryBytes, MemoryPeakBytes: u.MemoryPeakBytes}
	}
	return resp, nil
}

// grpcClient is the host's Runtime, backed by a plugin over gRPC.
type grpcClient struct {
	client runtimepb.RuntimeClient
}

func (c *grpcClient) Init(ctx context.Context, cfg Config) (Info, error) {
	resp, err := c.client.Init(ctx, &runtimepb.InitRequest{DataDir: cfg.DataDir, Settings: cfg.Settings})
	if err != nil {
		return Info{}, fromGRPCError(err)
	}
	info := Info{Name: resp.GetName(), Version: resp.GetVersion(), NoValidate: resp.GetNoValidate(), Warnings: resp.GetWarnings(), RuntimeOptions: resp.GetRuntimeOptions()}
	for _, k := range resp.GetKinds() {
		info.Kinds = append(info.Kinds, Kind(k))
	}
	return info, nil
}

func (c *grpcClient) Validate(ctx context.Context, spec TaskSpec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("while encoding the spec: %w", err)
	}
	_, err = c.client.Validate(ctx, &runtimepb.ValidateRequest{SpecJson: b})
	return fromGRPCError(err)
}

func (c *grpcClient) Start(ctx context.Context, task Task) (TaskStatus, error) {
	pt, err := taskToProto(task)
	if err != nil {
		return TaskStatus{}, err
	}
	resp, err := c.client.Start(ctx, &runtimepb.StartRequest{Task: pt})
	if err != nil {
		return TaskStatus{}, fromGRPCError(err)
	}
	return statusFromProto(resp.GetStatus()), nil
}

func (c *grpcClient) Stop(ctx context.Context, name string, grace time.Duration) error {
	_, err := c.client.Stop(ctx, &runtimepb.StopRequest{Name: name, GracePeriodNanos: int64(grace)})
	return fromGRPCError(err)
}

func (c *grpcClient) Remove(ctx context.Context, name string) error {
	_, err := c.client.Remove(ctx, &runtimepb.RemoveRequest{Name: name})
	return fromGRPCError(err)
}

func (c *grpcClient) Status(ctx context.Context, name string) (TaskStatus, error) {
	resp, err := c.client.Status(ctx, &runtimepb.StatusRequest{Name: name})
	if err != nil {
		return TaskStatus{}, fromGRPCError(err)
	}
	return statusFromProto(resp.GetStatus()), nil
}

func (c *grpcClient) List(ctx context.Context) ([]TaskStatus, error) {
	resp, err := c.client.List(ctx, &runtimepb.ListRequest{})
	if err != nil {
		return nil, fromGRPCError(err)
	}
	return statusesFromProto(resp.GetStatuses()), nil
}

func (c *grpcClient) Recover(ctx context.Context, tasks []Task) ([]TaskStatus, error) {
	req := &runtimepb.RecoverRequest{Tasks: make([]*runtimepb.Task, 0, len(tasks))}
	for _, t := range tasks {
		pt, err := taskToProto(t)
		if err != nil {
			return nil, err
		}
		req.Tasks = append(req.Tasks, pt)
	}
	resp, err := c.client.Recover(ctx, req)
	if err != nil {
		return nil, fromGRPCError(err)
	}
	return statusesFromProto(resp.GetStatuses()), nil
}

// Events returns a channel that is closed when ctx ends or the stream breaks
// (for example because the plugin exited); the host treats a closed channel
// as a reason to check on the plugin.
func (c *grpcClient) Events(ctx context.Context) (<-chan TaskStatus, error) {
	ch := make(chan TaskStatus, 64)
	recv, err := c.events(ctx)
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(ch)
		_ = recv(func(st TaskStatus) {
			select {
			case ch <- st:
			case <-ctx.Done():
			}
		})
	}()
	return ch, nil
}

// events opens the plugin's event stream; the function it returns receives
// from it until it ends, calling fn for each status.
func (c *grpcClient) events(ctx context.Context) (func(fn func(TaskStatus)) error, error) {
	stream, err := c.client.Events(ctx, &runtimepb.EventsRequest{})
	if err != nil {
		return nil, fromGRPCError(err)
	}
	return func(fn func(TaskStatus)) error {
		for {
			msg, err := stream.Recv()
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fn(statusFromProto(msg))
		}
	}, nil
}

// WatchEvents subscribes to rt's status changes (Runtime.Events) and
// returns a function that calls fn for each of them, in order, until the
// subscription ends (ctx done, or the plugin gone). For a runtime from
// Launch, fn runs in the goroutine that receives the plugin's messages: an
// exit reaches fn without passing through a channel and another goroutine.
func WatchEvents(ctx context.Context, rt Runtime) (func(fn func(TaskStatus)), error) {
	if c, ok := rt.(*grpcClient); ok {
		recv, err := c.events(ctx)
		if err != nil {
			return nil, err
		}
		return func(fn func(TaskStatus)) { _ = recv(fn) }, nil
	}
	ch, err := rt.Events(ctx)
	if err != nil {
		return nil, err
	}
	return func(fn func(TaskStatus)) {
		for st := range ch {
			fn(st)
		}
	}, nil
}

// Usage asks the plugin for its tasks' usage; a plugin that keeps none
// gives an error wrapping ErrUnsupported.
func (c *grpcClient) Usage(ctx context.Context, names []string) ([]TaskUsage, error) {
	resp, err := c.client.Usage(ctx, &runtimepb.UsageRequest{Names: names})
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("while asking for usage: %w", ErrUnsupported)
	}
	if err != nil {
		return nil, fromGRPCError(err)
	}
	out := make([]TaskUsage, len(resp.GetUsage()))
	for i, u := range resp.GetUsage() {
		out[i] = TaskUsage{Name: u.GetName(), CPUSeconds: u.GetCpuSeconds(), MemoryBytes: u.GetMemoryBytes(), MemoryPeakBytes: u.GetMemoryPeakBytes()}
	}
	return out, nil
}
