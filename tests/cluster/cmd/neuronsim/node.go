package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// AllocationAnnotation is where the node records what the device manager handed each container
// (device IDs, env, device specs): the part of the pod spec a real runtime would consume.
const AllocationAnnotation = "neuron-contig.test/allocation"

// containerAllocation is one container's entry in AllocationAnnotation.
type containerAllocation struct {
	Name        string              `json:"name"`
	DeviceIDs   map[string][]string `json:"deviceIDs"`
	Envs        map[string]string   `json:"envs"`
	DeviceSpecs []deviceSpec        `json:"deviceSpecs"`
	// CDIDevices are the CDI device IDs of the container's ResourceClaims (only with --dra).
	CDIDevices []string `json:"cdiDevices,omitempty"`
}

type deviceSpec struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	Permissions   string `json:"permissions"`
}

// simNode is the kubelet side of a simulated node. Only the container runtime is missing: a pod the
// device manager admits is reported Running at once, and a deleted pod is finalized at once.
type simNode struct {
	name     string
	client   kubernetes.Interface
	pods     cache.Store
	dm       devicemanager.Manager
	dra      *dra.Manager // nil unless --dra
	queue    workqueue.TypedInterface[string]
	admitted sets.Set[types.UID] // touched only by the admission worker
	// sourcesReady is false while pods that were running before a kubelet restart are re-admitted,
	// which is how the device manager tells a kubelet restart from a node reboot.
	sourcesReady atomic.Bool
}

func (n *simNode) AddSource(string) {}
func (n *simNode) AllReady() bool   { return n.sourcesReady.Load() }

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runNode(args []string) int {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the test API server")
	name := fs.String("node-name", "", "Node object name (required)")
	instanceType := fs.String("instance-type", "", "value of the node.kubernetes.io/instance-type label")
	podResourcesSocket := fs.String("pod-resources-socket", "/var/lib/kubelet/pod-resources/kubelet.sock",
		"where the PodResources v1 server listens")
	withDRA := fs.Bool("dra", false, "also host the kubelet DRA manager and plugin manager "+
		"(/var/lib/kubelet/plugins_registry): pods' ResourceClaims are prepared through DRA drivers")
	var labels, taints stringList
	fs.Var(&labels, "label", "extra node label key=value (repeatable)")
	fs.Var(&taints, "taint", "node taint key=value:Effect (repeatable)")
	klog.InitFlags(fs)
	_ = fs.Parse(args)
	if *name == "" {
		fmt.Fprintln(os.Stderr, "node: --node-name is required")
		return 2
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.ErrorS(err, "load kubeconfig")
		return 1
	}
	cfg.QPS, cfg.Burst = 50, 100
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	n := &simNode{
		name: *name, client: kubernetes.NewForConfigOrDie(cfg),
		queue: workqueue.NewTyped[string](), admitted: sets.New[types.UID](),
	}
	nodeLabels := map[string]string{"kubernetes.io/hostname": *name, "node.kubernetes.io/instance-type": *instanceType}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		nodeLabels[k] = v
	}
	nodeTaints, err := parseTaints(taints)
	if err == nil {
		err = n.run(ctx, nodeLabels, nodeTaints, *podResourcesSocket, *withDRA)
	}
	if err != nil {
		klog.ErrorS(err, "node failed", "node", *name)
		return 1
	}
	return 0
}

func parseTaints(specs []string) ([]v1.Taint, error) {
	var out []v1.Taint
	for _, s := range specs {
		kv, effect, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("taint %q: want key=value:Effect", s)
		}
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, v1.Taint{Key: k, Value: v, Effect: v1.TaintEffect(effect)})
	}
	return out, nil
}

func (n *simNode) run(ctx context.Context, labels map[string]string, taints []v1.Taint, podResourcesSocket string,
	withDRA bool,
) error {
	if err := n.registerNode(ctx, labels, taints); err != nil {
		return err
	}
	if err := n.startPodInformer(ctx); err != nil {
		return err
	}

	// Containers of pods reported Running are what a container runtime would still hold after a
	// kubelet restart; the device manager uses them to keep those pods' devices without re-allocating.
	initial, running := containermap.NewContainerMap(), sets.New[string]()
	for _, obj := range n.pods.List() {
		pod := obj.(*v1.Pod)
		if pod.Status.Phase == v1.PodRunning {
			for _, c := range pod.Spec.Containers {
				id := containerID(pod, c.Name)
				initial.Add(string(pod.UID), c.Name, id)
				running.Insert(id)
			}
		}
	}
	logger := klog.FromContext(ctx)
	dm, err := devicemanager.NewManagerImpl(logger, nil, topologymanager.NewFakeManager(logger))
	if err != nil {
		return fmt.Errorf("create device manager: %w", err)
	}
	n.dm = dm
	if err := dm.Start(logger, n.activePods, n, initial, running); err != nil {
		return fmt.Errorf("start device manager: %w", err)
	}
	defer func() { _ = dm.Stop(logger) }()
	if withDRA {
		if n.dra, err = startDRA(ctx, n); err != nil {
			return err
		}
		defer n.dra.Stop()
	}

	stopPodResources, err := servePodResources(ctx, podResourcesSocket, n)
	if err != nil {
		return err
	}
	defer stopPodResources()

	for _, obj := range n.pods.List() {
		if pod := obj.(*v1.Pod); pod.Status.Phase == v1.PodRunning && pod.DeletionTimestamp == nil {
			n.readmit(ctx, pod)
		}
	}
	n.sourcesReady.Store(true)
	klog.InfoS("node ready", "node", n.name)

	go n.syncStatusLoop(ctx)
	go func() { <-ctx.Done(); n.queue.ShutDown() }()
	for n.processNext(ctx) {
	}
	return nil
}

func containerID(pod *v1.Pod, container string) string {
	return "neuronsim://" + string(pod.UID) + "/" + container
}

// activePods is the device manager's view of pods that still hold devices (kubelet's GetActivePods).
func (n *simNode) activePods() []*v1.Pod {
	var out []*v1.Pod
	for _, obj := range n.pods.List() {
		pod := obj.(*v1.Pod)
		terminal := pod.Status.Phase == v1.PodFailed || pod.Status.Phase == v1.PodSucceeded
		if !terminal && pod.DeletionTimestamp == nil {
			out = append(out, pod)
		}
	}
	return out
}

func (n *simNode) startPodInformer(ctx context.Context) error {
	lw := cache.NewListWatchFromClient(n.client.CoreV1().RESTClient(), "pods", metav1.NamespaceAll,
		fields.OneTermEqualSelector("spec.nodeName", n.name))
	informer := cache.NewSharedIndexInformer(lw, &v1.Pod{}, 0, cache.Indexers{})
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			n.queue.Add(key)
		}
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue,
	})
	if err != nil {
		return err
	}
	n.pods = informer.GetStore()
	go informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return errors.New("pod informer did not sync")
	}
	return nil
}

// processNext handles one pod key; kubelet admits pods one at a time, and so does this loop.
func (n *simNode) processNext(ctx context.Context) bool {
	key, shutdown := n.queue.Get()
	if shutdown {
		return false
	}
	defer n.queue.Done(key)
	obj, exists, _ := n.pods.GetByKey(key)
	if !exists {
		n.dm.UpdateAllocatedDevices(klog.FromContext(ctx)) // returns the devices of the deleted pod to the pool
		return true
	}
	pod := obj.(*v1.Pod)
	switch {
	case pod.DeletionTimestamp != nil:
		n.finalize(ctx, pod)
	case pod.Status.Phase == v1.PodPending && !n.admitted.Has(pod.UID):
		n.admit(ctx, pod)
	}
	return true
}

// finalize stands in for the runtime having stopped every container: the pod object is removed.
// With DRA, kubelet first unprepares the pod's claims and keeps the pod object until that succeeds.
func (n *simNode) finalize(ctx context.Context, pod *v1.Pod) {
	if n.dra != nil {
		if err := n.dra.UnprepareResources(ctx, pod); err != nil {
			klog.InfoS("unpreparing dynamic resources failed, will retry", "pod", klog.KObj(pod), "err", err)
			n.retryLater(pod)
			return
		}
	}
	zero := int64(0)
	err := n.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "finalize pod", "pod", klog.KObj(pod))
		n.queue.Add(cache.MetaObjectToName(pod).String())
	}
	n.dm.UpdateAllocatedDevices(klog.FromContext(ctx))
}

// admit runs kubelet's device admission for every container, then records the result.
func (n *simNode) admit(ctx context.Context, pod *v1.Pod) {
	n.admitted.Insert(pod.UID)
	var allocations []containerAllocation
	err := n.allocate(ctx, pod)
	if err == nil && n.dra != nil {
		// After admission kubelet's pod worker prepares the pod's claims before any container
		// starts, and retries the pod while that fails: the pod stays Pending meanwhile.
		if err := n.dra.PrepareResources(ctx, pod); err != nil {
			klog.InfoS("preparing dynamic resources failed, will retry", "pod", klog.KObj(pod), "err", err)
			n.admitted.Delete(pod.UID) // the device manager keeps what it allocated: no new Allocate RPC
			n.retryLater(pod)
			return
		}
	}
	if err == nil {
		allocations, err = n.describeAllocation(ctx, pod)
	}
	if err != nil {
		klog.InfoS("pod rejected at admission", "pod", klog.KObj(pod), "err", err)
		msg := fmt.Sprintf("Allocate failed due to %v, which is unexpected", err)
		n.setStatus(ctx, pod, func(s *v1.PodStatus) {
			s.Phase, s.Reason, s.Message = v1.PodFailed, "UnexpectedAdmissionError", msg
		})
		return
	}
	raw, _ := json.Marshal(map[string]any{"containers": allocations})
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{AllocationAnnotation: string(raw)},
	}})
	if _, err := n.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch,
		metav1.PatchOptions{}); err != nil {
		klog.ErrorS(err, "record allocation", "pod", klog.KObj(pod))
	}
	n.setStatus(ctx, pod, markRunning)
	klog.InfoS("pod admitted", "pod", klog.KObj(pod), "allocation", string(raw))
}

// readmit is kubelet's pass over pods already running when it restarts: the device manager finds
// their devices in its checkpoint and must not call the plugin.
func (n *simNode) readmit(ctx context.Context, pod *v1.Pod) {
	n.admitted.Insert(pod.UID)
	if err := n.allocate(ctx, pod); err != nil {
		klog.ErrorS(err, "running pod failed re-admission", "pod", klog.KObj(pod))
	}
}

func podContainers(pod *v1.Pod) []v1.Container {
	return append(append([]v1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
}

// allocate is kubelet's device admission: the device manager's Allocate for each container, init
// containers first (GetPreferredAllocation and Allocate RPCs to the plugin happen in here).
func (n *simNode) allocate(ctx context.Context, pod *v1.Pod) error {
	containers := podContainers(pod)
	for i := range containers {
		if err := n.dm.Allocate(ctx, pod, &containers[i], lifecycle.AddOperation); err != nil {
			return err
		}
	}
	return nil
}

// describeAllocation reads back what a runtime would be handed for each container.
func (n *simNode) describeAllocation(ctx context.Context, pod *v1.Pod) ([]containerAllocation, error) {
	containers := podContainers(pod)
	var out []containerAllocation
	for i := range containers {
		c := &containers[i]
		opts, err := n.dm.GetDeviceRunContainerOptions(ctx, pod, c)
		if err != nil {
			return nil, err
		}
		cdi, err := n.cdiDevices(pod, c)
		if err != nil {
			return nil, err
		}
		alloc := containerAllocation{Name: c.Name, DeviceIDs: map[string][]string{}, Envs: map[string]string{},
			DeviceSpecs: []deviceSpec{}, CDIDevices: cdi}
		for res, devs := range n.dm.GetDevices(string(pod.UID), c.Name) {
			for id := range devs {
				alloc.DeviceIDs[res] = append(alloc.DeviceIDs[res], id)
			}
			sortNumeric(alloc.DeviceIDs[res])
		}
		if opts != nil {
			for _, e := range opts.Envs {
				alloc.Envs[e.Name] = e.Value
			}
			for _, d := range opts.Devices {
				alloc.DeviceSpecs = append(alloc.DeviceSpecs, deviceSpec{d.PathOnHost, d.PathInContainer, d.Permissions})
			}
		}
		out = append(out, alloc)
	}
	return out, nil
}

func sortNumeric(ids []string) {
	sort.Slice(ids, func(i, j int) bool {
		a, errA := strconv.Atoi(ids[i])
		b, errB := strconv.Atoi(ids[j])
		if errA != nil || errB != nil {
			return ids[i] < ids[j]
		}
		return a < b
	})
}

func markRunning(s *v1.PodStatus) {
	now := metav1.Now()
	s.Phase, s.HostIP, s.StartTime = v1.PodRunning, "127.0.0.1", &now
	s.Conditions = nil
	for _, t := range []v1.PodConditionType{v1.PodScheduled, v1.PodInitialized, v1.ContainersReady, v1.PodReady} {
		s.Conditions = append(s.Conditions, v1.PodCondition{Type: t, Status: v1.ConditionTrue, LastTransitionTime: now})
	}
}

func (n *simNode) setStatus(ctx context.Context, pod *v1.Pod, mutate func(*v1.PodStatus)) {
	pods := n.client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != pod.UID {
			return nil
		}
		mutate(&cur.Status)
		if cur.Status.Phase == v1.PodRunning {
			cur.Status.ContainerStatuses = nil
			for _, c := range cur.Spec.Containers {
				cur.Status.ContainerStatuses = append(cur.Status.ContainerStatuses, v1.ContainerStatus{
					Name: c.Name, Image: c.Image, Ready: true, Started: ptrTo(true), ContainerID: containerID(cur, c.Name),
					State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: *cur.Status.StartTime}},
				})
			}
		}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		klog.ErrorS(err, "update pod status", "pod", klog.KObj(pod))
	}
}

func ptrTo[T any](v T) *T { return &v }

// registerNode creates the Node object, or refreshes its labels and taints after a restart.
func (n *simNode) registerNode(ctx context.Context, labels map[string]string, taints []v1.Taint) error {
	nodes := n.client.CoreV1().Nodes()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			node = &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: labels}, Spec: v1.NodeSpec{Taints: taints}}
			_, err = nodes.Create(ctx, node, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if node.Labels == nil {
			node.Labels = map[string]string{}
		}
		for k, v := range labels {
			node.Labels[k] = v
		}
		node.Spec.Taints = taints
		_, err = nodes.Update(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// syncStatusLoop publishes capacity and allocatable from the device manager, as kubelet's node
// status setter does, and keeps the Ready condition fresh.
func (n *simNode) syncStatusLoop(ctx context.Context) {
	var lastCapacity, lastAllocatable v1.ResourceList
	var lastBeat time.Time
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		capacity, allocatable, _ := n.dm.GetCapacity(klog.FromContext(ctx))
		changed := !resourceListsEqual(lastCapacity, capacity) || !resourceListsEqual(lastAllocatable, allocatable)
		if changed || time.Since(lastBeat) > 10*time.Second {
			if err := n.updateNodeStatus(ctx, capacity, allocatable); err != nil {
				klog.ErrorS(err, "update node status", "node", n.name)
			} else {
				lastCapacity, lastAllocatable, lastBeat = capacity, allocatable, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func resourceListsEqual(a, b v1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v.Cmp(w) != 0 {
			return false
		}
	}
	return true
}

func (n *simNode) updateNodeStatus(ctx context.Context, devCapacity, devAllocatable v1.ResourceList) error {
	base := v1.ResourceList{
		v1.ResourceCPU: resource.MustParse("96"), v1.ResourceMemory: resource.MustParse("768Gi"),
		v1.ResourcePods: resource.MustParse("110"),
	}
	nodes := n.client.CoreV1().Nodes()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		capacity, allocatable := base.DeepCopy(), base.DeepCopy()
		// A device plugin resource the manager no longer reports reads 0, as on a real kubelet restart.
		for name := range node.Status.Capacity {
			if _, ok := base[name]; !ok {
				capacity[name], allocatable[name] = resource.MustParse("0"), resource.MustParse("0")
			}
		}
		for k, v := range devCapacity {
			capacity[k] = v
		}
		for k, v := range devAllocatable {
			allocatable[k] = v
		}
		now := metav1.Now()
		node.Status.Capacity, node.Status.Allocatable = capacity, allocatable
		node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: v1.NodeHostName, Address: n.name}}
		// Ready is ours; every other condition (the device plugin's NeuronDevicesHealthy, a node problem
		// detector's) is kept, as kubelet's status setter keeps conditions it does not own.
		conditions := []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			Message: "simulated Neuron node (neuronsim): device manager running", LastHeartbeatTime: now,
			LastTransitionTime: now,
		}}
		for _, condition := range node.Status.Conditions {
			if condition.Type != v1.NodeReady {
				conditions = append(conditions, condition)
			}
		}
		node.Status.Conditions = conditions
		_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}
