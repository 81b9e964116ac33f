package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	pluginwatcherapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
)

// kubeletRootDir is the kubelet's --root-dir. Like the device manager's socket, it is the real path:
// each node runs in a mount namespace where its own directory is mounted here.
const kubeletRootDir = "/var/lib/kubelet"

// draRetryDelay stands in for kubelet's pod-worker backoff when preparing or unpreparing a pod's
// ResourceClaims fails (driver not registered yet, claim not reserved yet, ...): the pod is retried.
const draRetryDelay = 2 * time.Second

// startDRA hosts the kubelet's DRA side, as kubelet does when DynamicResourceAllocation is on
// (locked on since 1.35): the real DRA manager (pkg/kubelet/cm/dra) with its checkpoint in the
// kubelet root dir, and the real plugin manager (pkg/kubelet/pluginmanager) watching
// <root>/plugins_registry, with the DRA manager as its handler for "DRAPlugin" registrations.
// A DRA driver registers by creating a socket in plugins_registry that serves
// pluginregistration.Registration; kubelet then dials the endpoint from GetInfo, a path in this
// node's mount namespace (conventionally <root>/plugins/<driver>/dra.sock).
//
// Device plugins keep registering through kubelet.sock, as before; the device manager's
// plugins_registry handler is not installed, so nothing changes for them.
func startDRA(ctx context.Context, n *simNode) (*dra.Manager, error) {
	logger := klog.FromContext(ctx)
	// kubelet's setupDataDirs creates both at startup.
	registrationDir := filepath.Join(kubeletRootDir, kubeletconfig.DefaultKubeletPluginsRegistrationDirName)
	for _, dir := range []string{filepath.Join(kubeletRootDir, kubeletconfig.DefaultKubeletPluginsDirName), registrationDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	mgr, err := dra.NewManager(logger, n.client, kubeletRootDir)
	if err != nil {
		return nil, fmt.Errorf("create DRA manager: %w", err)
	}
	// kubelet reads its node from an informer; the DRA manager only needs it to wipe the node's
	// ResourceSlices (at start, and 30 s after a driver's last plugin went away).
	getNode := func(ctx context.Context) (*v1.Node, error) {
		return n.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
	}
	if err := mgr.Start(ctx, n.activePods, getNode, n); err != nil {
		return nil, fmt.Errorf("start DRA manager: %w", err)
	}
	// GetWatcherHandler is valid only after Start. The plugin manager records no events; a recorder
	// with no channel drops them.
	pm := pluginmanager.NewPluginManager(registrationDir, &record.FakeRecorder{})
	pm.AddHandler(pluginwatcherapi.DRAPlugin, mgr.GetWatcherHandler())
	go pm.Run(ctx, n, ctx.Done())
	logger.Info("DRA manager and plugin manager running", "registrationDir", registrationDir)
	return mgr, nil
}

// retryLater puts the pod back on the admission queue after draRetryDelay.
func (n *simNode) retryLater(pod *v1.Pod) {
	key := cache.MetaObjectToName(pod).String()
	time.AfterFunc(draRetryDelay, func() { n.queue.Add(key) })
}

// cdiDevices is what the container runtime would be handed for the container's claims.
func (n *simNode) cdiDevices(pod *v1.Pod, c *v1.Container) ([]string, error) {
	if n.dra == nil {
		return nil, nil
	}
	info, err := n.dra.GetResources(pod, c)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range info.CDIDevices {
		out = append(out, d.Name)
	}
	return out, nil
}

// draResources is the PodResources DynamicResources provider: kubelet's conversion
// (containerManagerImpl.GetDynamicResources, 1.37.2) over the real DRA manager, kept as it is,
// including that a driver's later devices also list the CDI IDs of its earlier ones: a client of
// PodResources sees what a real kubelet sends.
type draResources struct{ mgr *dra.Manager }

func (d draResources) GetDynamicResources(logger klog.Logger, pod *v1.Pod, container *v1.Container) []*podresourcesv1.DynamicResource {
	infos, err := d.mgr.GetContainerClaimInfos(pod, container)
	if err != nil {
		logger.Error(err, "Unable to get container claim info state")
		return []*podresourcesv1.DynamicResource{}
	}
	var out []*podresourcesv1.DynamicResource
	for _, info := range infos {
		var claimResources []*podresourcesv1.ClaimResource
		for driverName, driverState := range info.DriverState {
			var cdi []*podresourcesv1.CDIDevice
			for _, device := range driverState.Devices {
				for _, id := range device.CDIDeviceIDs {
					cdi = append(cdi, &podresourcesv1.CDIDevice{Name: id})
				}
				claimResources = append(claimResources, &podresourcesv1.ClaimResource{
					CdiDevices: cdi, DriverName: driverName, PoolName: device.PoolName, DeviceName: device.DeviceName,
					ShareId: (*string)(device.ShareID),
				})
			}
		}
		out = append(out, &podresourcesv1.DynamicResource{
			ClaimName: info.ClaimName, ClaimNamespace: info.Namespace, ClaimResources: claimResources,
		})
	}
	return out
}
