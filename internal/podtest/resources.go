package podtest

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The kubelet's constants for CPU and OOM settings (pkg/kubelet/cm and
// pkg/kubelet/qos).
const (
	cfsPeriodUS      = 100000 // the CFS quota period, 100 ms
	minCPUShares     = 2
	maxCPUShares     = 262144
	minCFSQuotaUS    = 1000
	guaranteedOOMAdj = -997
	bestEffortOOMAdj = 1000
)

// swapControl is the swap controller of the node's cgroups, which decides
// how the kubelet keeps containers from swapping.
type swapControl int

const (
	swapNone swapControl = iota // no swap accounting: nothing to set
	swapV1                      // cgroup v1 memsw: swap limit = memory limit
	swapV2                      // cgroup v2: memory.swap.max = 0
)

// resources are a container's CPU and memory requests and limits, requests
// defaulted to limits as the API server does.
type resources struct {
	cpuRequest, cpuLimit, memRequest, memLimit *resource.Quantity
}

func takeResources(r *corev1.ResourceRequirements) (resources, error) {
	get := func(l corev1.ResourceList, name corev1.ResourceName) *resource.Quantity {
		q, ok := l[name]
		if !ok {
			return nil
		}
		delete(l, name)
		return &q
	}
	out := resources{
		cpuLimit:   get(r.Limits, corev1.ResourceCPU),
		memLimit:   get(r.Limits, corev1.ResourceMemory),
		cpuRequest: get(r.Requests, corev1.ResourceCPU),
		memRequest: get(r.Requests, corev1.ResourceMemory),
	}
	if out.cpuRequest == nil && out.cpuLimit != nil {
		q := out.cpuLimit.DeepCopy()
		out.cpuRequest = &q
	}
	if out.memRequest == nil && out.memLimit != nil {
		q := out.memLimit.DeepCopy()
		out.memRequest = &q
	}
	if out.cpuLimit != nil && out.cpuRequest.Cmp(*out.cpuLimit) > 0 {
		return out, fmt.Errorf("resources: cpu request %s is above the limit %s", out.cpuRequest, out.cpuLimit)
	}
	if out.memLimit != nil && out.memRequest.Cmp(*out.memLimit) > 0 {
		return out, fmt.Errorf("resources: memory request %s is above the limit %s", out.memRequest, out.memLimit)
	}
	return out, nil
}

func positive(q *resource.Quantity) bool { return q != nil && q.Sign() > 0 }

// podQOS is the pod's QoS class as Kubernetes computes it from CPU and
// memory (v1 qos.GetPodQOS).
func podQOS(rs []resources) corev1.PodQOSClass {
	requests := map[string]resource.Quantity{}
	limits := map[string]resource.Quantity{}
	add := func(m map[string]resource.Quantity, k string, q *resource.Quantity) {
		if !positive(q) {
			return
		}
		sum := q.DeepCopy()
		if prev, ok := m[k]; ok {
			sum.Add(prev)
		}
		m[k] = sum
	}
	guaranteed := true
	for _, r := range rs {
		add(requests, "cpu", r.cpuRequest)
		add(requests, "memory", r.memRequest)
		add(limits, "cpu", r.cpuLimit)
		add(limits, "memory", r.memLimit)
		if !positive(r.cpuLimit) || !positive(r.memLimit) {
			guaranteed = false
		}
	}
	if len(requests) == 0 && len(limits) == 0 {
		return corev1.PodQOSBestEffort
	}
	for k, req := range requests {
		if lim, ok := limits[k]; !ok || lim.Cmp(req) != 0 {
			guaranteed = false
		}
	}
	if guaranteed && len(requests) == len(limits) {
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

// milliCPUToShares and milliCPUToQuota are the kubelet's (pkg/kubelet/cm).
func milliCPUToShares(milli int64) int64 {
	if milli == 0 {
		return minCPUShares
	}
	shares := milli * 1024 / 1000
	return min(max(shares, minCPUShares), maxCPUShares)
}

func milliCPUToQuota(milli, period int64) int64 {
	if milli == 0 {
		return 0
	}
	return max(milli*period/1000, minCFSQuotaUS)
}

// linuxResources is the kubelet's generateLinuxContainerResources for a
// node with CFS quota on, no exclusive CPUs, and swap off for containers.
func linuxResources(r resources, qos corev1.PodQOSClass, n node) *runtimeapi.LinuxContainerResources {
	out := &runtimeapi.LinuxContainerResources{CpuPeriod: cfsPeriodUS}
	var req, lim int64
	if r.cpuRequest != nil {
		req = r.cpuRequest.MilliValue()
	}
	if r.cpuLimit != nil {
		lim = r.cpuLimit.MilliValue()
	}
	out.CpuShares = milliCPUToShares(req)
	out.CpuQuota = milliCPUToQuota(lim, cfsPeriodUS)
	if r.memLimit != nil {
		out.MemoryLimitInBytes = r.memLimit.Value()
	}
	out.OomScoreAdj = oomScoreAdj(qos, r, n.memory)
	// Hugepages are refused in the manifest (a limit is a leftover), and
	// the kubelet limits every size the node has to 0 then.
	for _, size := range n.hugePageSizes {
		out.HugepageLimits = append(out.HugepageLimits, &runtimeapi.HugepageLimit{PageSize: size, Limit: 0})
	}
	setNoSwap(out, n.swap)
	return out
}

// setNoSwap keeps a container from swapping, as the kubelet's NoSwap.
func setNoSwap(r *runtimeapi.LinuxContainerResources, s swapControl) {
	switch s {
	case swapV1:
		r.MemorySwapLimitInBytes = r.MemoryLimitInBytes
	case swapV2:
		if r.Unified == nil {
			r.Unified = map[string]string{}
		}
		r.Unified["memory.swap.max"] = "0"
	}
}

// oomScoreAdj is the kubelet's qos.GetContainerOOMScoreAdjust. (A
// containerd with restrict_oom_score_adj, as here, raises a negative one to
// its own score.)
func oomScoreAdj(qos corev1.PodQOSClass, r resources, capacity int64) int64 {
	switch qos {
	case corev1.PodQOSGuaranteed:
		return guaranteedOOMAdj
	case corev1.PodQOSBestEffort:
		return bestEffortOOMAdj
	}
	var req int64
	if r.memRequest != nil {
		req = r.memRequest.Value()
	}
	adj := int64(bestEffortOOMAdj)
	if capacity > 0 {
		adj = 1000 - 1000*req/capacity
	}
	if adj < 1000+guaranteedOOMAdj {
		return 1000 + guaranteedOOMAdj
	}
	if adj == bestEffortOOMAdj {
		return adj - 1
	}
	return adj
}
