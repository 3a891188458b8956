// Command omniharness is ironboot's Omni conformance peer. It serves the COSI State gRPC
// API with the real upstream modules (cosi-project/runtime's in-memory state and gRPC
// server, Omni's client resource types, go-api-signature's verification) and emulates
// Omni's access rules for infra providers, so the Rust client is proven against the Go
// code that Omni itself runs.
//
//	omniharness keygen --id ID [--ttl 1h] [--email E]   prints a service-account key (base64)
//	omniharness serve --key-file F [--tls]                serves; commands on stdin (see control.go)
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/siderolabs/go-api-signature/pkg/pgp"
	"github.com/siderolabs/go-api-signature/pkg/serviceaccount"
	"github.com/siderolabs/omni/client/pkg/access"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // Omni's client compresses with gzip

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/state/protobuf/server"
)

func main() {
	if len(os.Args) < 2 {
		fatalf("usage: omniharness keygen|serve ...")
	}

	switch os.Args[1] {
	case "keygen":
		keygen(os.Args[2:])
	case "serve":
		serve(os.Args[2:])
	default:
		fatalf("unknown command %q", os.Args[1])
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "omniharness: "+format+"\n", args...)
	os.Exit(2)
}

// keygen makes a key the way `omnictl infraprovider create <id>` does: account name
// infra-provider:<id>, user ID "<id> (<os>/<arch>) <<id>@infra-provider.serviceaccount.omni.sidero.dev>".
func keygen(args []string) {
	fs := flag.NewFlagSet("keygen", flag.ExitOnError)
	id := fs.String("id", "bare-metal", "provider ID")
	ttl := fs.Duration("ttl", 365*24*time.Hour, "key lifetime")
	email := fs.String("email", "", "override the key's e-mail (to make a wrong identity)")
	name := fs.String("name", "", "override the account name")
	_ = fs.Parse(args)

	accountName := access.InfraProviderServiceAccountPrefix + *id
	if *name != "" {
		accountName = *name
	}

	sa := access.ParseServiceAccountFromName(accountName)

	mail := sa.FullID()
	if *email != "" {
		mail = *email
	}

	key, err := pgp.GenerateKey(sa.BaseName, runtime.GOOS+"/"+runtime.GOARCH, mail, *ttl)
	if err != nil {
		fatalf("generating key: %v", err)
	}

	encoded, err := serviceaccount.Encode(accountName, key)
	if err != nil {
		fatalf("encoding key: %v", err)
	}

	recordSecret("Omni service-account key", encoded)
	fmt.Println(encoded)
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	keyFile := fs.String("key-file", "", "service-account key (base64) whose public key is trusted")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	useTLS := fs.Bool("tls", false, "serve TLS with a self-signed certificate")
	legacy := fs.Bool("legacy-omni", false, "an older Omni: no ProviderJoinConfig resource definition")
	_ = fs.Parse(args)

	raw, err := os.ReadFile(*keyFile)
	if err != nil {
		fatalf("reading key: %v", err)
	}

	sa, err := serviceaccount.Decode(strings.TrimSpace(string(raw)))
	if err != nil {
		fatalf("decoding key: %v", err)
	}

	h := newHarness(sa)

	if !*legacy {
		if err = h.defineProviderJoinConfig(context.Background()); err != nil {
			fatalf("resource definitions: %v", err)
		}
	}

	var opts []grpc.ServerOption

	opts = append(opts,
		grpc.ChainUnaryInterceptor(h.unaryInterceptor),
		grpc.ChainStreamInterceptor(h.streamInterceptor),
	)

	if *useTLS {
		cert, certErr := selfSigned()
		if certErr != nil {
			fatalf("certificate: %v", certErr)
		}

		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fatalf("listen: %v", err)
	}

	srv := grpc.NewServer(opts...)
	v1alpha1.RegisterStateServer(srv, server.NewState(h.rules))

	go func() {
		if serveErr := srv.Serve(lis); serveErr != nil {
			fatalf("serve: %v", serveErr)
		}
	}()

	h.reply(map[string]any{"ok": true, "listening": lis.Addr().String()})

	h.controlLoop(context.Background(), os.Stdin)

	srv.Stop()
}

func selfSigned() (tls.Certificate, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "omniharness"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, err
	}

	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// reply writes one JSON line on stdout (the control protocol's answers).
func (h *harness) reply(v map[string]any) {
	h.outMu.Lock()
	defer h.outMu.Unlock()

	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"ok":false,"error":%q}`, err.Error()))
	}

	fmt.Println(string(b))
}
