package main

import (
	"context"
	"sync"

	"github.com/siderolabs/go-api-signature/pkg/message"
	"github.com/siderolabs/go-api-signature/pkg/serviceaccount"
	"github.com/siderolabs/omni/client/pkg/access"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cosi-project/runtime/pkg/state"
)

type providerIDKey struct{}

// harness holds the state, the trusted key and what the control protocol inspects.
type harness struct {
	sa    *serviceaccount.ServiceAccount
	inner state.CoreState // unfiltered state (Omni's own view)
	rules *rulesState     // what providers see

	mu           sync.Mutex
	authFailures []string
	lastYAML     map[string]string // "ns/type/id" -> last YAML spec received
	watchCancels map[int]context.CancelFunc
	nextWatch    int
	calls        map[string]int

	outMu sync.Mutex
}

// authenticate checks a call's signature as Omni's signature interceptor does: the
// signature header names the key by fingerprint, go-api-signature verifies timestamp,
// payload and signature; the provider ID comes from the account name.
func (h *harness) authenticate(ctx context.Context, method string) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	msg := message.NewGRPC(md, method)

	fail := func(reason string) error {
		h.mu.Lock()
		h.authFailures = append(h.authFailures, method+": "+reason)
		h.mu.Unlock()

		// Omni answers every signature failure the same way.
		return status.Error(codes.Unauthenticated, "invalid signature")
	}

	sig, err := msg.Signature()
	if err != nil {
		return nil, fail("signature header: " + err.Error())
	}

	if sig.KeyFingerprint != h.sa.Key.Fingerprint() {
		return nil, fail("unknown key fingerprint " + sig.KeyFingerprint)
	}

	if err = msg.VerifySignature(h.sa.Key); err != nil {
		return nil, fail("verify: " + err.Error())
	}

	if sig.Identity != h.sa.Name {
		return nil, fail("identity " + sig.Identity + " is not " + h.sa.Name)
	}

	account := access.ParseServiceAccountFromName(h.sa.Name)
	if !account.IsInfraProvider {
		return nil, fail("not an infra provider account")
	}

	h.mu.Lock()
	h.calls[method]++
	h.mu.Unlock()

	return context.WithValue(ctx, providerIDKey{}, account.BaseName), nil
}

func (h *harness) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := h.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}

	h.recordYAML(req)

	return handler(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context //nolint:containedctx
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (h *harness) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := h.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	h.mu.Lock()
	id := h.nextWatch
	h.nextWatch++
	h.watchCancels[id] = cancel
	h.mu.Unlock()

	defer func() {
		h.mu.Lock()
		delete(h.watchCancels, id)
		h.mu.Unlock()
	}()

	err = handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	if ctx.Err() != nil && ss.Context().Err() == nil {
		// Broken on purpose by the control protocol: look like a lost connection.
		return status.Error(codes.Unavailable, "stream broken by the harness")
	}

	return err
}

// breakStreams cancels every open stream (watches, lists) and says how many.
func (h *harness) breakStreams() int {
	h.mu.Lock()
	defer h.mu.Unlock()

	for _, cancel := range h.watchCancels {
		cancel()
	}

	return len(h.watchCancels)
}
