// Command neuronsim runs the pieces of a small real Kubernetes control plane and simulated Neuron
// nodes for the neuron-contig cluster tests. Every subcommand except `node` and `stockplugin` is
// the unmodified upstream component; `node` wraps the real kubelet device manager and PodResources
// server and fakes only the container runtime.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: neuronsim <subcommand> [flags]

subcommands:
  etcd         embedded etcd (go.etcd.io/etcd/server/v3/embed) on loopback
  apiserver    the real kube-apiserver (k8s.io/kubernetes/cmd/kube-apiserver/app)
  scheduler    the real kube-scheduler (k8s.io/kubernetes/cmd/kube-scheduler/app)
  controller-manager
               the real kube-controller-manager (k8s.io/kubernetes/cmd/kube-controller-manager/app);
               the DRA tests run only its resourceclaim-controller (--controllers=resourceclaim-controller)
  node         a simulated Neuron node: real kubelet device manager + PodResources server
  stockplugin  a naive device plugin without GetPreferredAllocation (the "before" baseline)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "etcd":
		os.Exit(runEtcd(args))
	case "node":
		os.Exit(runNode(args))
	case "stockplugin":
		os.Exit(runStockPlugin(args))
	default:
		fmt.Fprintf(os.Stderr, "unknown subcommand %q\n%s", sub, usage)
		os.Exit(2)
	}
}
