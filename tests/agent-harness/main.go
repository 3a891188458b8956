// Command agentharness plays a Talos metal agent against ironboot, built on the real
// github.com/jhump/grpctunnel module (v0.3, as the metal agent pins it): it dials
// ironboot's API port in plaintext h2c with the `machine-id` metadata on every call (as
// the agent's interceptors add it), opens the reverse tunnel with
// grpctunnel.NewReverseTunnelServer and serves management.AgentService over it.
//
// The Go module of talos-metal-agent is not served by the module proxy here, so the
// service is described by ironboot's own proto/proto/agent/agent.proto, compiled at run
// time by bufbuild/protocompile and served with dynamicpb messages (Go's protobuf
// runtime encodes and decodes them). The field numbers are checked against upstream in
// ironboot-proto's own tests.
//
// Every call is printed as one JSON line on stdout, with the request as protojson
// (proto field names, unpopulated fields included) and the `grpc-timeout` it carried.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/bufbuild/protocompile"
	"github.com/jhump/grpctunnel"
	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

var (
	addr       = flag.String("addr", "", "ironboot's API address, host:port (plaintext h2c), or https://host:port (TLS), as metal.provider.address")
	tlsCAFile  = flag.String("tls-ca-file", "", "with https://: trust only this CA (PEM), standing in for Talos's trusted roots")
	tlsSkip    = flag.Bool("tls-skip-verify", false, "with https://: do not verify the certificate (metal.provider.tls.skip.verify=1)")
	machineID  = flag.String("machine-id", "", "the machine-id metadata to send")
	name       = flag.String("name", "agent", "label of this agent in the printed events")
	protoDir   = flag.String("proto-dir", "", "directory holding agent/agent.proto")
	ipmiAddr   = flag.String("ipmi-address", "10.0.0.42", "GetPowerManagement: ipmi.address")
	ipmiPort   = flag.Uint("ipmi-port", 623, "GetPowerManagement: ipmi.port")
	bigAddress = flag.Int("big-address", 0, "GetPowerManagement: answer an ipmi.address of this many bytes")
	wipeDelay  = flag.Duration("wipe-delay", 0, "WipeDisks: take this long (cancellable)")
	reconnect  = flag.Bool("reconnect", false, "open the tunnel again whenever it ends, as the metal agent does")
	setError   = flag.String("set-error", "", "SetPowerManagement: fail with PermissionDenied and this message")
	sourceIP   = flag.String("source-ip", "", "dial from this local address (a second loopback address plays another host)")
)

var outMu sync.Mutex

func emit(v map[string]any) {
	v["agent"] = *name
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Println(string(b))
}

func fnv64(s string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return fmt.Sprintf("%016x", h.Sum64())
}

type agent struct {
	svc protoreflect.ServiceDescriptor
}

func (a *agent) handler(m protoreflect.MethodDescriptor) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	method := string(m.Name())
	return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := dynamicpb.NewMessage(m.Input())
		if err := dec(in); err != nil {
			return nil, err
		}
		ev := map[string]any{"event": "call", "method": method, "size": proto.Size(in)}
		md, _ := metadata.FromIncomingContext(ctx)
		ev["grpc_timeout"] = strings.Join(md.Get("grpc-timeout"), ",")
		if proto.Size(in) < 4096 {
			js, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(in)
			if err != nil {
				return nil, err
			}
			ev["request"] = json.RawMessage(js)
		}
		out := dynamicpb.NewMessage(m.Output())
		switch method {
		case "GetPowerManagement":
			ipmiField := m.Output().Fields().ByName("ipmi")
			ipmi := out.NewField(ipmiField).Message()
			f := ipmiField.Message().Fields()
			address := *ipmiAddr
			if *bigAddress > 0 {
				address = strings.Repeat("0123456789abcdef", *bigAddress/16+1)[:*bigAddress]
			}
			ipmi.Set(f.ByName("address"), protoreflect.ValueOfString(address))
			ipmi.Set(f.ByName("port"), protoreflect.ValueOfUint32(uint32(*ipmiPort)))
			ipmi.Set(f.ByName("user_exists"), protoreflect.ValueOfBool(true))
			out.Set(ipmiField, protoreflect.ValueOfMessage(ipmi))
			ev["answer_fnv"] = fnv64(address)
		case "SetPowerManagement":
			ipmiField := m.Input().Fields().ByName("ipmi")
			if in.Has(ipmiField) {
				pw := in.Get(ipmiField).Message().Get(ipmiField.Message().Fields().ByName("password")).String()
				ev["password_len"] = len(pw)
				ev["password_fnv"] = fnv64(pw)
			}
			if *setError != "" {
				emit(ev)
				return nil, status.Error(codes.PermissionDenied, *setError)
			}
			if *ipmiAdmin != "" && in.Has(ipmiField) {
				user := in.Get(ipmiField).Message().Get(ipmiField.Message().Fields().ByName("username")).String()
				pw := in.Get(ipmiField).Message().Get(ipmiField.Message().Fields().ByName("password")).String()
				if err := configureInBand(user, pw); err != nil {
					emit(ev)
					return nil, status.Error(codes.Internal, err.Error())
				}
			}
		case "WipeDisks":
			if *wipeDelay > 0 {
				emit(ev)
				select {
				case <-time.After(*wipeDelay):
					emit(map[string]any{"event": "finished", "method": method})
				case <-ctx.Done():
					emit(map[string]any{"event": "cancelled", "method": method, "error": ctx.Err().Error()})
					return nil, status.FromContextError(ctx.Err()).Err()
				}
				return out, nil
			}
		}
		emit(ev)
		return out, nil
	}
}

func main() {
	flag.Parse()
	if *addr == "" || *machineID == "" || *protoDir == "" {
		fmt.Fprintln(os.Stderr, "usage: agentharness --addr HOST:PORT --machine-id ID --proto-dir DIR [options]")
		os.Exit(2)
	}
	ctx := context.Background()
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{*protoDir}}),
	}
	files, err := compiler.Compile(ctx, "agent/agent.proto")
	if err != nil {
		fmt.Fprintln(os.Stderr, "compiling agent.proto:", err)
		os.Exit(1)
	}
	svc := files[0].Services().ByName("AgentService")
	if svc == nil {
		fmt.Fprintln(os.Stderr, "agent.proto has no AgentService")
		os.Exit(1)
	}
	a := &agent{svc: svc}
	desc := grpc.ServiceDesc{
		ServiceName: string(svc.FullName()),
		HandlerType: (*any)(nil),
		Metadata:    "agent/agent.proto",
	}
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		desc.Methods = append(desc.Methods, grpc.MethodDesc{MethodName: string(m.Name()), Handler: a.handler(m)})
	}

	// As the metal agent: TLS when the address has the https scheme (skip-verify on
	// request), else plaintext gRPC; machine-id added to every call by interceptors.
	withID := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "machine-id", *machineID)
	}
	target := *addr
	creds := insecure.NewCredentials()
	if u, perr := url.Parse(*addr); perr == nil && u.Scheme == "https" {
		target = u.Host
		cfg := &tls.Config{InsecureSkipVerify: *tlsSkip}
		if *tlsCAFile != "" {
			pem, rerr := os.ReadFile(*tlsCAFile)
			if rerr != nil {
				fmt.Fprintln(os.Stderr, "reading --tls-ca-file:", rerr)
				os.Exit(1)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				fmt.Fprintln(os.Stderr, "--tls-ca-file: no certificate")
				os.Exit(1)
			}
			cfg.RootCAs = pool
		}
		creds = credentials.NewTLS(cfg)
	}
	dialOpts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if *sourceIP != "" {
		local := &net.TCPAddr{IP: net.ParseIP(*sourceIP)}
		if local.IP == nil {
			fmt.Fprintln(os.Stderr, "--source-ip: not an IP address:", *sourceIP)
			os.Exit(2)
		}
		dialer := &net.Dialer{LocalAddr: local}
		dialOpts = append(dialOpts, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", a)
		}))
	}
	conn, err := grpc.NewClient(target,
		append(dialOpts,
			grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				return invoker(withID(ctx), method, req, reply, cc, opts...)
			}),
			grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(withID(ctx), desc, cc, method, opts...)
			}),
		)...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc.NewClient:", err)
		os.Exit(1)
	}
	defer conn.Close()

	server := grpctunnel.NewReverseTunnelServer(tunnelpb.NewTunnelServiceClient(conn))
	server.RegisterService(&desc, a)
	for {
		emit(map[string]any{"event": "serving"})
		started, err := server.Serve(ctx)
		ev := map[string]any{"event": "serve-ended", "started": started}
		if err != nil {
			ev["error"] = err.Error()
		}
		emit(ev)
		// As the metal agent does: keep dialling the provider (it may be restarting).
		if !*reconnect {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
