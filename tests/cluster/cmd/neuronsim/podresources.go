package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

// servePodResources serves the real kubelet PodResources v1 server on a unix socket, backed by the
// node's pods, its device manager and (with --dra) its DRA manager. CPUs and memory are reported
// empty: this node has none to manage.
func servePodResources(ctx context.Context, socket string, n *simNode) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		return nil, err
	}
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on PodResources socket %s: %w", socket, err)
	}
	providers := podresources.PodResourcesProviders{
		Pods: podsProvider{n}, Devices: devicesProvider{n.dm}, Cpus: noResources{}, Memory: noResources{},
		DynamicResources: noResources{},
	}
	if n.dra != nil {
		providers.DynamicResources = draResources{n.dra}
	}
	srv := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(srv, podresources.NewV1PodResourcesServer(ctx, providers))
	go func() { _ = srv.Serve(lis) }()
	return srv.Stop, nil
}

type podsProvider struct{ n *simNode }

func (p podsProvider) GetActivePods() []*v1.Pod { return p.n.activePods() }
func (p podsProvider) GetPods() []*v1.Pod       { return p.n.activePods() }
func (p podsProvider) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	obj, ok, _ := p.n.pods.GetByKey(namespace + "/" + name)
	if !ok {
		return nil, false
	}
	return obj.(*v1.Pod), true
}

type devicesProvider struct{ dm devicemanager.Manager }

func (d devicesProvider) UpdateAllocatedDevices(logger klog.Logger) {
	d.dm.UpdateAllocatedDevices(logger)
}
func (d devicesProvider) GetDevices(podUID, containerName string) []*podresourcesv1.ContainerDevices {
	return toContainerDevices(d.dm.GetDevices(podUID, containerName))
}
func (d devicesProvider) GetAllocatableDevices(logger klog.Logger) []*podresourcesv1.ContainerDevices {
	return toContainerDevices(d.dm.GetAllocatableDevices(logger))
}

// toContainerDevices mirrors kubelet's conversion: one entry per device (NUMA topology unused here).
func toContainerDevices(devs devicemanager.ResourceDeviceInstances) []*podresourcesv1.ContainerDevices {
	var out []*podresourcesv1.ContainerDevices
	for res, instances := range devs {
		for id := range instances {
			out = append(out, &podresourcesv1.ContainerDevices{ResourceName: res, DeviceIds: []string{id}})
		}
	}
	return out
}

type noResources struct{}

func (noResources) GetCPUs(*v1.Pod, *v1.Container) []int64 { return nil }
func (noResources) GetPodCPUs(string) []int64              { return nil }
func (noResources) GetAllocatableCPUs() []int64            { return nil }
func (noResources) GetMemory(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.ContainerMemory {
	return nil
}
func (noResources) GetPodMemory(klog.Logger, string) []*podresourcesv1.ContainerMemory { return nil }
func (noResources) GetAllocatableMemory(klog.Logger) []*podresourcesv1.ContainerMemory { return nil }
func (noResources) GetDynamicResources(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.DynamicResource {
	return nil
}
