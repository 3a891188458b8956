package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/siderolabs/go-api-signature/pkg/serviceaccount"
	"github.com/siderolabs/omni/client/pkg/omni/resources/infra"
	"github.com/siderolabs/omni/client/pkg/omni/resources/siderolink"
	"go.yaml.in/yaml/v4"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func newHarness(sa *serviceaccount.ServiceAccount) *harness {
	inner := namespaced.NewState(func(ns resource.Namespace) state.CoreState {
		// Deep history so that watches resume from a bookmark after a break.
		return inmem.NewStateWithOptions(inmem.WithHistoryMaxCapacity(10000), inmem.WithHistoryInitialCapacity(1000))(ns)
	})

	return &harness{
		sa:           sa,
		inner:        inner,
		rules:        &rulesState{inner: inner},
		lastYAML:     map[string]string{},
		watchCancels: map[int]context.CancelFunc{},
		calls:        map[string]int{},
	}
}

// recordYAML keeps the YAML spec of every resource written, as it arrived.
func (h *harness) recordYAML(req any) {
	var r *v1alpha1.Resource

	switch req := req.(type) {
	case *v1alpha1.CreateRequest:
		r = req.GetResource()
	case *v1alpha1.UpdateRequest:
		r = req.GetNewResource()
	default:
		return
	}

	md := r.GetMetadata()

	h.mu.Lock()
	h.lastYAML[md.GetNamespace()+"/"+md.GetType()+"/"+md.GetId()] = r.GetSpec().GetYamlSpec()
	h.mu.Unlock()
}

// command is one control request (a JSON line on stdin).
type command struct {
	Cmd        string            `json:"cmd"`
	Kind       string            `json:"kind"` // Go type name of Omni's, see newResource
	Namespace  string            `json:"ns"`
	Type       string            `json:"type"`
	ID         string            `json:"id"`
	Spec       json.RawMessage   `json:"spec"` // protojson of the Go spec message
	Labels     map[string]string `json:"labels"`
	Finalizers []string          `json:"finalizers"`
	Owner      *string           `json:"owner"`
	RawSpec    []byte            `json:"raw_spec"` // protobuf spec bytes (base64 in JSON)
	YAMLSpec   string            `json:"yaml_spec"`
}

// newResource makes an Omni resource of a kind by the name of its Go type.
func newResource(kind, id string) (resource.Resource, error) {
	switch kind {
	case "InfraMachine":
		return infra.NewMachine(id), nil
	case "BMCConfig":
		return infra.NewBMCConfig(id), nil
	case "ProviderJoinConfig":
		return siderolink.NewProviderJoinConfig(id), nil
	case "ConnectionParams": // an older Omni's, read by the legacy join flow
		return siderolink.NewConnectionParams(id), nil //nolint:staticcheck
	case "InfraMachineStatus":
		return infra.NewMachineStatus(id), nil
	case "InfraProviderStatus":
		return infra.NewProviderStatus(id), nil
	case "InfraProviderHealthStatus":
		return infra.NewProviderHealthStatus(id), nil
	}

	return nil, fmt.Errorf("unknown kind %q", kind)
}

type specValuer interface{ GetValue() proto.Message }

func specOf(r resource.Resource) (proto.Message, error) {
	v, ok := r.Spec().(specValuer)
	if !ok {
		return nil, fmt.Errorf("%s has no protobuf spec (type %T)", r.Metadata(), r.Spec())
	}

	return v.GetValue(), nil
}

func (h *harness) controlLoop(ctx context.Context, in io.Reader) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)

	for sc.Scan() {
		var c command
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			h.reply(map[string]any{"ok": false, "error": "bad command: " + err.Error()})

			continue
		}

		if c.Cmd == "quit" {
			h.reply(map[string]any{"ok": true})

			return
		}

		out, err := h.run(ctx, &c)
		if err != nil {
			h.reply(map[string]any{"ok": false, "error": err.Error()})

			continue
		}

		out["ok"] = true
		h.reply(out)
	}
}

func (h *harness) run(ctx context.Context, c *command) (map[string]any, error) {
	switch c.Cmd {
	case "put": // Omni writes a resource (create or update), as its controllers do
		return h.put(ctx, c)
	case "put_raw": // a resource from its raw spec bytes, as another writer left it
		return h.putRaw(ctx, c)
	case "destroy":
		return map[string]any{}, h.inner.Destroy(ctx, resource.NewMetadata(c.Namespace, c.Type, c.ID, resource.VersionUndefined))
	case "check":
		return h.check(ctx, c)
	case "get": // read a resource's spec (protojson) and metadata; found=false if absent
		r, err := h.inner.Get(ctx, resource.NewMetadata(c.Namespace, c.Type, c.ID, resource.VersionUndefined))
		if state.IsNotFoundError(err) {
			return map[string]any{"found": false}, nil
		}
		if err != nil {
			return nil, err
		}
		out := metaOf(r)
		out["found"] = true
		raw, err := rawSpec(r)
		if err != nil {
			return nil, err
		}
		out["raw_spec"] = raw
		// Types without a registered Go spec (the provider's private ones) give metadata only.
		if spec, specErr := specOf(r); specErr == nil {
			js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(spec)
			if err != nil {
				return nil, err
			}
			out["spec"] = json.RawMessage(js)
		}
		return out, nil
	case "teardown": // Omni starts removing a resource: phase tearingDown, finalizers pending
		ready, err := state.WrapCore(h.inner).Teardown(ctx, resource.NewMetadata(c.Namespace, c.Type, c.ID, resource.VersionUndefined))
		if err != nil {
			return nil, err
		}
		return map[string]any{"destroy_ready": ready}, nil
	case "meta":
		r, err := h.inner.Get(ctx, resource.NewMetadata(c.Namespace, c.Type, c.ID, resource.VersionUndefined))
		if err != nil {
			return nil, err
		}

		return metaOf(r), nil
	case "legacy_join_config": // what the Go provider serves from ConnectionParams
		return h.legacyJoinConfig(ctx, c)
	case "break_streams":
		return map[string]any{"broken": h.breakStreams()}, nil
	case "auth_failures":
		h.mu.Lock()
		defer h.mu.Unlock()

		failures := h.authFailures
		h.authFailures = nil

		return map[string]any{"failures": failures}, nil
	case "calls":
		h.mu.Lock()
		defer h.mu.Unlock()

		return map[string]any{"calls": maps.Clone(h.calls)}, nil
	}

	return nil, fmt.Errorf("unknown command %q", c.Cmd)
}

func metaOf(r resource.Resource) map[string]any {
	md := r.Metadata()

	return map[string]any{
		"version":    md.Version().String(),
		"phase":      md.Phase().String(),
		"owner":      md.Owner(),
		"labels":     md.Labels().Raw(),
		"finalizers": []string(*md.Finalizers()),
	}
}

func (h *harness) put(ctx context.Context, c *command) (map[string]any, error) {
	r, err := newResource(c.Kind, c.ID)
	if err != nil {
		return nil, err
	}

	spec, err := specOf(r)
	if err != nil {
		return nil, err
	}

	if err = protojson.Unmarshal(c.Spec, spec); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}

	for k, v := range c.Labels {
		r.Metadata().Labels().Set(k, v)
	}

	cur, err := h.inner.Get(ctx, r.Metadata())

	switch {
	case state.IsNotFoundError(err):
		err = h.inner.Create(ctx, r)
	case err != nil:
		return nil, err
	default:
		r.Metadata().SetVersion(cur.Metadata().Version())
		r.Metadata().Finalizers().Set(*cur.Metadata().Finalizers())
		err = h.inner.Update(ctx, r)
	}

	if err != nil {
		return nil, err
	}

	return metaOf(r), nil
}

// check decodes what the client wrote with the real Go types and compares: the protobuf
// spec and the YAML spec must both equal the expected spec (given as protojson of the
// Go message); labels, finalizers and owner, when given, must match exactly.
func (h *harness) check(ctx context.Context, c *command) (map[string]any, error) {
	stored, err := h.inner.Get(ctx, resource.NewMetadata(c.Namespace, c.Type, c.ID, resource.VersionUndefined))
	if err != nil {
		return nil, err
	}

	got, err := specOf(stored)
	if err != nil {
		return nil, err
	}

	want := got.ProtoReflect().New().Interface()
	if err = protojson.Unmarshal(c.Spec, want); err != nil {
		return nil, fmt.Errorf("expected spec: %w", err)
	}

	gotJSON, _ := protojson.Marshal(got)
	wantJSON, _ := protojson.Marshal(want)

	var problems []string

	if !proto.Equal(got, want) {
		problems = append(problems, fmt.Sprintf("protobuf spec %T: got %s, want %s", got, gotJSON, wantJSON))
	}

	h.mu.Lock()
	yamlSpec, haveYAML := h.lastYAML[c.Namespace+"/"+c.Type+"/"+c.ID]
	h.mu.Unlock()

	if !haveYAML {
		problems = append(problems, "no YAML spec recorded")
	} else {
		fresh, createErr := protobuf.CreateResource(c.Type)
		if createErr != nil {
			return nil, createErr
		}

		if yamlErr := yaml.Unmarshal([]byte(yamlSpec), fresh.Spec()); yamlErr != nil {
			problems = append(problems, fmt.Sprintf("YAML spec does not decode: %v\n%s", yamlErr, yamlSpec))
		} else {
			fromYAML, _ := specOf(fresh)
			if !proto.Equal(fromYAML, want) {
				yJSON, _ := protojson.Marshal(fromYAML)
				problems = append(problems, fmt.Sprintf("YAML spec decodes to %s, want %s\n%s", yJSON, wantJSON, yamlSpec))
			}
		}
	}

	md := stored.Metadata()
	if c.Labels != nil && !maps.Equal(md.Labels().Raw(), c.Labels) {
		problems = append(problems, fmt.Sprintf("labels %v, want %v", md.Labels().Raw(), c.Labels))
	}

	if c.Finalizers != nil && !slices.Equal([]string(*md.Finalizers()), c.Finalizers) {
		problems = append(problems, fmt.Sprintf("finalizers %v, want %v", *md.Finalizers(), c.Finalizers))
	}

	if c.Owner != nil && md.Owner() != *c.Owner {
		problems = append(problems, fmt.Sprintf("owner %q, want %q", md.Owner(), *c.Owner))
	}

	if len(problems) > 0 {
		return nil, fmt.Errorf("%s: %v", md, problems)
	}

	out := metaOf(stored)
	out["spec"] = json.RawMessage(gotJSON)

	return out, nil
}

// rawSpec is the protobuf encoding of a resource's spec as stored (unknown fields kept).
func rawSpec(r resource.Resource) ([]byte, error) {
	pr, err := protobuf.FromResource(r, protobuf.WithoutYAML())
	if err != nil {
		return nil, err
	}

	m, err := pr.Marshal()
	if err != nil {
		return nil, err
	}

	return m.GetSpec().GetProtoSpec(), nil
}

// putRaw stores a resource given by its raw spec bytes (decoded with the Go type when one
// is registered, keeping fields the type does not know, as the COSI server does), its
// owner, finalizers and labels: the state another writer (the Go provider, or a newer
// Omni) leaves behind. An existing resource is replaced.
func (h *harness) putRaw(ctx context.Context, c *command) (map[string]any, error) {
	md := &v1alpha1.Metadata{
		Namespace:  c.Namespace,
		Type:       c.Type,
		Id:         c.ID,
		Version:    "undefined",
		Phase:      "running",
		Finalizers: c.Finalizers,
		Labels:     c.Labels,
	}

	pr, err := protobuf.Unmarshal(&v1alpha1.Resource{
		Metadata: md,
		Spec:     &v1alpha1.Spec{ProtoSpec: c.RawSpec, YamlSpec: c.YAMLSpec},
	})
	if err != nil {
		return nil, err
	}

	r, err := protobuf.UnmarshalResource(pr)
	if err != nil {
		return nil, err
	}

	owner := ""
	if c.Owner != nil {
		owner = *c.Owner
	}

	cur, err := h.inner.Get(ctx, r.Metadata())

	switch {
	case state.IsNotFoundError(err):
		err = h.inner.Create(ctx, r, state.WithCreateOwner(owner))
	case err != nil:
		return nil, err
	default:
		r.Metadata().SetVersion(cur.Metadata().Version())
		if err = r.Metadata().SetOwner(cur.Metadata().Owner()); err != nil {
			return nil, err
		}
		err = h.inner.Update(ctx, r, state.WithUpdateOwner(cur.Metadata().Owner()), state.WithExpectedPhaseAny())
	}

	if err != nil {
		return nil, err
	}

	stored, err := h.inner.Get(ctx, r.Metadata())
	if err != nil {
		return nil, err
	}

	return metaOf(stored), nil
}
