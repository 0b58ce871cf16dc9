// Command k8s is one binary holding the upstream Kubernetes components nodeprep's end-to-end
// tests run against, at the release go.mod pins: etcd, kube-apiserver, kubelet, kube-scheduler,
// kube-controller-manager and kubectl, plus a CRI runtime fake that records what the kubelet
// asks of it, and a certificate generator. One binary rather than six because linking is the
// slow part of a cold build on two cores; each component is the upstream command, unchanged.
//
//	k8s <component> [upstream flags...]
package main

import (
	"context"
	"fmt"
	"os"

	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: k8s etcd|kube-apiserver|kubelet|kube-scheduler|kube-controller-manager|kubectl|fake-cri|certs [args...]")
		os.Exit(2)
	}
	component := os.Args[1]
	// Each upstream command parses os.Args[1:] as its own flags.
	os.Args = append([]string{component}, os.Args[2:]...)
	switch component {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "fake-cri":
		os.Exit(fakeCRI(os.Args[1:]))
	case "certs":
		os.Exit(certs(os.Args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "k8s: unknown component %q\n", component)
		os.Exit(2)
	}
}
