package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// stockPlugin is the baseline the project replaces: a device plugin that advertises whole Neuron
// devices and does not implement GetPreferredAllocation, so the kubelet device manager picks IDs in
// arbitrary (Go map) order. It exists only so the tests can show the problem is real.
type stockPlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices    int
	deviceRoot string
}

func (p *stockPlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *stockPlugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	resp := &pluginapi.ListAndWatchResponse{}
	for i := 0; i < p.devices; i++ {
		resp.Devices = append(resp.Devices, &pluginapi.Device{ID: strconv.Itoa(i), Health: pluginapi.Healthy})
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *stockPlugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	out := &pluginapi.AllocateResponse{}
	for _, creq := range req.ContainerRequests {
		cresp := &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"AWS_NEURON_VISIBLE_DEVICES": strings.Join(creq.DevicesIds, ",")},
		}
		for _, id := range creq.DevicesIds {
			cresp.Devices = append(cresp.Devices, &pluginapi.DeviceSpec{
				HostPath: filepath.Join(p.deviceRoot, "neuron"+id), ContainerPath: "/dev/neuron" + id, Permissions: "rw",
			})
		}
		out.ContainerResponses = append(out.ContainerResponses, cresp)
	}
	return out, nil
}

// runStockPlugin serves the stock plugin and registers it once with the kubelet socket in socket-dir.
func runStockPlugin(args []string) int {
	fs := flag.NewFlagSet("stockplugin", flag.ExitOnError)
	socketDir := fs.String("kubelet-socket-dir", pluginapi.DevicePluginPath, "directory holding kubelet.sock")
	devices := fs.Int("devices", 16, "number of Neuron devices to advertise")
	deviceRoot := fs.String("device-root", "/dev", "host directory of the neuronN device files")
	_ = fs.Parse(args)

	endpoint := "stock-neuron.sock"
	socket := filepath.Join(*socketDir, endpoint)
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stockplugin: listen %s: %v\n", socket, err)
		return 1
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, &stockPlugin{devices: *devices, deviceRoot: *deviceRoot})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("unix://"+filepath.Join(*socketDir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "stockplugin: dial kubelet: %v\n", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: endpoint, ResourceName: "aws.amazon.com/neuron",
	}, grpc.WaitForReady(true))
	if err != nil {
		fmt.Fprintf(os.Stderr, "stockplugin: register: %v\n", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "stockplugin: registered aws.amazon.com/neuron")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return 0
}
