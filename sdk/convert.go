package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opensandbox/task-executor/sdk/runtimepb"
)

func nanos(t metav1.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) metav1.Time {
	if n == 0 {
		return metav1.Time{}
	}
	return metav1.NewTime(time.Unix(0, n))
}

func statusToProto(s TaskStatus) *runtimepb.TaskStatus {
	out := &runtimepb.TaskStatus{Name: s.Name}
	switch st := s.State; {
	case st.Terminated != nil:
		t := st.Terminated
		out.State = &runtimepb.TaskStatus_Terminated{Terminated: &runtimepb.Terminated{
			ExitCode: t.ExitCode, Signal: t.Signal, Reason: t.Reason, Message: t.Message,
			StartedAt: nanos(t.StartedAt), FinishedAt: nanos(t.FinishedAt),
		}}
	case st.Running != nil:
		out.State = &runtimepb.TaskStatus_Running{Running: &runtimepb.Running{StartedAt: nanos(st.Running.StartedAt)}}
	case st.Waiting != nil:
		out.State = &runtimepb.TaskStatus_Waiting{Waiting: &runtimepb.Waiting{Reason: st.Waiting.Reason, Message: st.Waiting.Message}}
	}
	return out
}

func statusFromProto(p *runtimepb.TaskStatus) TaskStatus {
	s := TaskStatus{Name: p.GetName()}
	switch st := p.GetState().(type) {
	case *runtimepb.TaskStatus_Terminated:
		t := st.Terminated
		s.State.Terminated = &corev1.ContainerStateTerminated{
			ExitCode: t.GetExitCode(), Signal: t.GetSignal(), Reason: t.GetReason(), Message: t.GetMessage(),
			StartedAt: fromNanos(t.GetStartedAt()), FinishedAt: fromNanos(t.GetFinishedAt()),
		}
	case *runtimepb.TaskStatus_Running:
		s.State.Running = &corev1.ContainerStateRunning{StartedAt: fromNanos(st.Running.GetStartedAt())}
	case *runtimepb.TaskStatus_Waiting:
		s.State.Waiting = &corev1.ContainerStateWaiting{Reason: st.Waiting.GetReason(), Message: st.Waiting.GetMessage()}
	}
	return s
}

func statusesToProto(in []TaskStatus) []*runtimepb.TaskStatus {
	out := make([]*runtimepb.TaskStatus, len(in))
	for i, s := range in {
		out[i] = statusToProto(s)
	}
	return out
}

func statusesFromProto(in []*runtimepb.TaskStatus) []TaskStatus {
	out := make([]TaskStatus, len(in))
	for i, s := range in {
		out[i] = statusFromProto(s)
	}
	return out
}

func taskToProto(t Task) (*runtimepb.Task, error) {
	spec, err := json.Marshal(t.Spec)
	if err != nil {
		return nil, fmt.Errorf("while encoding the spec of task %q: %w", t.Name, err)
	}
	return &runtimepb.Task{Name: t.Name, SpecJson: spec, Dir: t.Dir}, nil
}

func taskFromProto(p *runtimepb.Task) (Task, error) {
	t := Task{Name: p.GetName(), Dir: p.GetDir()}
	if err := json.Unmarshal(p.GetSpecJson(), &t.Spec); err != nil {
		return Task{}, fmt.Errorf("while decoding the spec of task %q: %w", t.Name, err)
	}
	return t, nil
}

// toGRPCError turns a Runtime error into a gRPC status so its meaning
// (not found, invalid spec) survives the wire.
func toGRPCError(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrInvalidSpec):
		code = codes.InvalidArgument
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrUnavailable):
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

// fromGRPCError is the inverse of toGRPCError on the host's side.
func fromGRPCError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w", st.Message(), ErrNotFound)
	case codes.InvalidArgument:
		return &remoteError{msg: st.Message(), kind: ErrInvalidSpec}
	case codes.Canceled:
		return fmt.Errorf("%s: %w", st.Message(), context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", st.Message(), context.DeadlineExceeded)
	case codes.Unavailable:
		return fmt.Errorf("%s: %w", st.Message(), ErrUnavailable)
	}
	return errors.New(st.Message())
}

// remoteError keeps a plugin's message as it was written (the host shows it
// to clients) while still matching errors.Is(err, kind).
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string        { return e.msg }
func (e *remoteError) Is(target error) bool { return target == e.kind }
