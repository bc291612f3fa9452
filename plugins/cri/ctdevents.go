package cri

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/opensandbox/task-executor/plugins/cri/ctdevents"
)

// criNamespace is containerd's namespace of the CRI's objects.
const criNamespace = "k8s.io"

// The topics of containerd's events followed here.
const (
	topicExit = "/tasks/exit"
	topicOOM  = "/tasks/oom"
)

// followContainerd follows containerd's own task events, beside CRI, on
// the same socket: a container's exit reaches the plugin as soon as its
// shim reports it, where containerd's CRI status and events show it only
// once containerd has removed the task, tens of milliseconds later (see
// exitFromEvent); an OOM kill, so that an exit after one is left to the
// CRI status, which tells it. A
// runtime that is not containerd has no such service (Unimplemented): the
// CRI events and the list then do it all.
func (d *Driver) followContainerd() {
	backoff := 100 * time.Millisecond
	for {
		err := d.followContainerdOnce()
		if status.Code(err) == codes.Unimplemented {
			d.log.Debug("the runtime has no containerd event service", "error", err)
			return
		}
		if d.ctx.Err() != nil {
			return
		}
		d.log.Warn("lost containerd's task events; following them again", "error", err, "in", backoff.String())
		time.Sleep(backoff)
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (d *Driver) followContainerdOnce() error {
	stream, err := ctdevents.NewEventsClient(d.cri.conn).Subscribe(d.ctx, &ctdevents.SubscribeRequest{
		Filters: []string{
			`namespace=="` + criNamespace + `",topic=="` + topicExit + `"`,
			`namespace=="` + criNamespace + `",topic=="` + topicOOM + `"`,
		},
	})
	if err != nil {
		return err
	}
	for {
		env, err := stream.Recv()
		if err != nil {
			return err
		}
		if env.Event == nil {
			continue
		}
		switch env.Topic {
		case topicExit:
			var ex ctdevents.TaskExit
			if err := proto.Unmarshal(env.Event.Value, &ex); err != nil {
				d.log.Warn("cannot read a task exit event", "error", err)
				continue
			}
			// An exec'ed process has an ID of its own; the container's own
			// process has the container's.
			if ex.Id != ex.ContainerId {
				continue
			}
			at := time.Now()
			if ex.ExitedAt != nil {
				at = ex.ExitedAt.AsTime()
			}
			if h := d.handleOfContainer(ex.ContainerId); h != nil {
				h.exitReported(taskExit{code: int32(ex.ExitStatus), at: at})
			}
		case topicOOM:
			var oom ctdevents.TaskOOM
			if err := proto.Unmarshal(env.Event.Value, &oom); err != nil {
				d.log.Warn("cannot read a task OOM event", "error", err)
				continue
			}
			if h := d.handleOfContainer(oom.ContainerId); h != nil {
				h.oomReported.Store(true)
			}
		}
	}
}
