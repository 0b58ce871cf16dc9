package main

// The kubelet needs a CRI runtime. Upstream's fake (k8s.io/cri-client/pkg/fake) keeps pods and
// containers in memory and answers like a runtime that starts everything at once; it is served
// here on its own gRPC server so an interceptor can append every CreateContainer request, as
// JSON, to a log the tests read: what the kubelet hands a container (device nodes, variables,
// CDI devices) is exactly what a real runtime would receive.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

func fakeCRI(args []string) int {
	fs := flag.NewFlagSet("fake-cri", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "unix socket to serve on, as unix:///path")
	record := fs.String("record", "", "file to append each CreateContainer request to, one JSON object a line")
	if err := fs.Parse(args); err != nil || *endpoint == "" || *record == "" {
		fmt.Fprintln(os.Stderr, "usage: k8s fake-cri --endpoint unix:///path --record file")
		return 2
	}
	out, err := os.OpenFile(*record, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-cri: open %s: %v\n", *record, err)
		return 1
	}
	var mu sync.Mutex
	recordCreate := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod == "/runtime.v1.RuntimeService/CreateContainer" {
			if m, ok := req.(proto.Message); ok {
				line, err := protojson.Marshal(m)
				if err == nil {
					mu.Lock()
					// One write per line so a reader never sees half a request.
					_, err = out.Write(append(compact(line), '\n'))
					mu.Unlock()
				}
				if err != nil {
					fmt.Fprintf(os.Stderr, "fake-cri: record: %v\n", err)
				}
			}
		}
		return handler(ctx, req)
	}

	runtime := fake.NewFakeRemoteRuntime()
	// Every pulled image gets this size; the kubelet refuses an image of size 0 as broken.
	runtime.ImageService.SetFakeImageSize(1 << 20)
	runtime.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{
		Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			{Type: runtimeapi.NetworkReady, Status: true},
		},
	}
	server := grpc.NewServer(grpc.UnaryInterceptor(recordCreate))
	runtimeapi.RegisterRuntimeServiceServer(server, runtime)
	runtimeapi.RegisterImageServiceServer(server, runtime)
	l, err := util.CreateListener(*endpoint)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-cri: listen on %s: %v\n", *endpoint, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; server.Stop() }()
	fmt.Fprintf(os.Stderr, "fake-cri: serving on %s\n", *endpoint)
	if err := server.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "fake-cri: serve: %v\n", err)
		return 1
	}
	return 0
}

// compact re-encodes protojson's output (whose spacing is deliberately unstable) on one line.
func compact(b []byte) []byte {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return b
	}
	c, err := json.Marshal(v)
	if err != nil {
		return b
	}
	return c
}
