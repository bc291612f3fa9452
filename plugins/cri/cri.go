package cri

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Labels put on every sandbox and container the plugin creates. They are
// how it finds its own objects again after any restart: containerd is
// shared with the node (and with other executors), so nothing else in it
// can be assumed to be ours.
const (
	// labelOwner is the executor instance (see ownerID).
	labelOwner = "task-executor.opensandbox.io/owner"
	// labelTask is the task's name.
	labelTask = "task-executor.opensandbox.io/task"
	// labelAttempt tells two tasks of the same name apart (one deleted, one
	// created again): it is recorded in the task's directory.
	labelAttempt = "task-executor.opensandbox.io/attempt"
	// labelDir is the task's directory, so the janitor can tell a sandbox
	// whose task is gone.
	labelDir = "task-executor.opensandbox.io/dir"
)

// sandboxNamespace is the CRI metadata namespace of the plugin's sandboxes,
// so that `crictl pods` shows where they come from.
const sandboxNamespace = "task-executor"

// client is the part of CRI the plugin uses.
type client struct {
	conn *grpc.ClientConn
	rt   cri.RuntimeServiceClient
	img  cri.ImageServiceClient
}

// dial connects to the CRI socket and checks that a CRI v1 runtime answers
// there.
func dial(ctx context.Context, socket string) (*client, *cri.VersionResponse, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Container configs and sandbox lists can be large.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, nil, fmt.Errorf("while connecting to the CRI socket %s: %w", socket, err)
	}
	c := &client{conn: conn, rt: cri.NewRuntimeServiceClient(conn), img: cri.NewImageServiceClient(conn)}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := c.rt.Version(vctx, &cri.VersionRequest{}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("while asking the CRI runtime at %s for its version: %w", socket, err)
	}
	return c, v, nil
}

// selector returns the labels that select one attempt of a task.
func (d *Driver) selector(task, attempt string) map[string]string {
	return map[string]string{labelOwner: d.owner, labelTask: task, labelAttempt: attempt}
}

// sandboxes lists the ready or not-ready sandboxes whose labels include sel.
func (c *client) sandboxes(ctx context.Context, sel map[string]string) ([]*cri.PodSandbox, error) {
	resp, err := c.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{LabelSelector: sel}})
	if err != nil {
		return nil, fmt.Errorf("while listing pod sandboxes: %w", err)
	}
	return resp.Items, nil
}

// containers lists the containers whose labels include sel.
func (c *client) containers(ctx context.Context, sel map[string]string) ([]*cri.Container, error) {
	resp, err := c.rt.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{LabelSelector: sel}})
	if err != nil {
		return nil, fmt.Errorf("while listing containers: %w", err)
	}
	return resp.Containers, nil
}

// containerStatus returns a container's status, or nil if it does not
// exist.
func (c *client) containerStatus(ctx context.Context, id string) (*cri.ContainerStatus, error) {
	resp, err := c.rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id})
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("while asking for the status of container %s: %w", id, err)
	}
	return resp.Status, nil
}

// removeSandbox stops and removes a sandbox with its containers. A sandbox
// already gone is not an error, and neither is one someone else is
// removing at the same time (the background clean-up of a finished task
// and a delete can meet): it waits for that removal instead.
func (c *client) removeSandbox(ctx context.Context, id string) error {
	for {
		err := c.removeSandboxOnce(ctx, id)
		if err == nil || !strings.Contains(err.Error(), "removing state") {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *client) removeSandboxOnce(ctx context.Context, id string) error {
	if _, err := c.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("while stopping pod sandbox %s: %w", id, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("while removing pod sandbox %s: %w", id, err)
	}
	return nil
}

// isNotFound reports whether err is CRI's answer about an object that does
// not exist.
func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.NotFound {
		return true
	}
	return false
}
