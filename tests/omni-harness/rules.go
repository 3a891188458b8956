package main

import (
	"context"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/omni/client/pkg/omni/resources"
	"github.com/siderolabs/omni/client/pkg/omni/resources/infra"
	"github.com/siderolabs/omni/client/pkg/omni/resources/omni"
	"github.com/siderolabs/omni/client/pkg/omni/resources/siderolink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rulesState is what an infra provider sees of Omni's state, emulating Omni's
// infraprovider state (internal/backend/runtime/omni/infraprovider/state.go):
//   - namespaces: infra-provider and infra-provider-ephemeral (shared; resources filtered
//     and stamped with the label omni.sidero.dev/infra-provider-id), and
//     infra-provider:<id> (private; types must end in .<id>.infraprovider.sidero.dev);
//   - InfraMachines, ProviderJoinConfigs, BMCConfigs, MachineRequests and
//     InfraMachineRegistrations are read-only for providers except for finalizers;
//   - InfraProviderStatuses and InfraProviderHealthStatuses must have the provider's ID;
//   - outside those namespaces, Omni's resource definitions (namespace meta) and the
//     legacy ConnectionParams (namespace default) can be read, not written: the Go
//     provider reads both at start to pick its join flow.
type rulesState struct {
	inner state.CoreState
}

type grant struct {
	providerID string // set: filter and stamp by label (shared namespaces)
	readOnly   bool
	checkID    bool
}

func (st *rulesState) check(ctx context.Context, ns resource.Namespace, typ resource.Type) (grant, string, error) {
	id, _ := ctx.Value(providerIDKey{}).(string)
	if id == "" {
		return grant{}, "", status.Error(codes.Unauthenticated, "no provider identity")
	}

	var a grant

	switch {
	case ns == meta.NamespaceName && typ == meta.ResourceDefinitionType,
		ns == resources.DefaultNamespace && typ == siderolink.ConnectionParamsType:
		return grant{readOnly: true}, id, nil
	}

	switch typ {
	case infra.InfraMachineType, siderolink.ProviderJoinConfigType, infra.BMCConfigType,
		infra.MachineRequestType, infra.MachineRegistrationType:
		a.readOnly = true
	case infra.InfraProviderStatusType, infra.InfraProviderHealthStatusType, infra.ProviderType:
		a.checkID = true
	case infra.InfraMachineStatusType, infra.MachineRequestStatusType, infra.ConfigPatchRequestType:
	default:
		if !strings.HasPrefix(ns, resources.InfraProviderSpecificNamespacePrefix) {
			return grant{}, id, status.Errorf(codes.PermissionDenied, "resource %q is not an infra provider managed resource", typ)
		}
	}

	switch ns {
	case resources.InfraProviderNamespace, resources.InfraProviderEphemeralNamespace:
		a.providerID = id

		return a, id, nil
	case resources.InfraProviderSpecificNamespacePrefix + id:
		suffix := "." + id + ".infraprovider.sidero.dev"
		if !strings.HasSuffix(typ, suffix) {
			return grant{}, id, status.Errorf(codes.InvalidArgument, "resources in namespace %q must have a type suffix %q", ns, suffix)
		}

		return grant{}, id, nil
	}

	return grant{}, id, status.Errorf(codes.PermissionDenied, "namespace %q not allowed for provider %q", ns, id)
}

func visible(res resource.Resource, providerID string) bool {
	v, ok := res.Metadata().Labels().Get(omni.LabelInfraProviderID)

	return ok && v == providerID
}

func (st *rulesState) Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error) {
	a, _, err := st.check(ctx, ptr.Namespace(), ptr.Type())
	if err != nil {
		return nil, err
	}

	res, err := st.inner.Get(ctx, ptr, opts...)
	if err != nil {
		return nil, err
	}

	if a.providerID != "" && !visible(res, a.providerID) {
		return nil, status.Error(codes.NotFound, "not found")
	}

	return res, nil
}

func (st *rulesState) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	a, _, err := st.check(ctx, kind.Namespace(), kind.Type())
	if err != nil {
		return resource.List{}, err
	}

	list, err := st.inner.List(ctx, kind, opts...)
	if err != nil || a.providerID == "" {
		return list, err
	}

	var out resource.List

	for _, r := range list.Items {
		if visible(r, a.providerID) {
			out.Items = append(out.Items, r)
		}
	}

	return out, nil
}

func (st *rulesState) Create(ctx context.Context, res resource.Resource, opts ...state.CreateOption) error {
	a, id, err := st.check(ctx, res.Metadata().Namespace(), res.Metadata().Type())
	if err != nil {
		return err
	}

	if a.readOnly {
		return status.Errorf(codes.PermissionDenied, "infra providers are not allowed to create %q resources", res.Metadata().Type())
	}

	if a.checkID && res.Metadata().ID() != id {
		return status.Errorf(codes.InvalidArgument, "resource ID must match the infra provider ID %q", id)
	}

	if a.providerID != "" {
		res.Metadata().Labels().Set(omni.LabelInfraProviderID, a.providerID)
	}

	return st.inner.Create(ctx, res, opts...)
}

func (st *rulesState) Update(ctx context.Context, res resource.Resource, opts ...state.UpdateOption) error {
	a, _, err := st.check(ctx, res.Metadata().Namespace(), res.Metadata().Type())
	if err != nil {
		return err
	}

	old, err := st.inner.Get(ctx, res.Metadata())
	if err != nil {
		return err
	}

	if a.readOnly && !equalButFinalizers(old, res) {
		return status.Errorf(codes.PermissionDenied, "infra providers are not allowed to update %q resources other than setting finalizers", res.Metadata().Type())
	}

	if a.providerID != "" {
		if !visible(old, a.providerID) {
			return status.Error(codes.NotFound, "not found")
		}

		res.Metadata().Labels().Set(omni.LabelInfraProviderID, a.providerID)
	}

	return st.inner.Update(ctx, res, opts...)
}

// equalButFinalizers: same metadata (ignoring version and finalizers) and same spec.
func equalButFinalizers(a, b resource.Resource) bool {
	ma, mb := a.Metadata().Copy(), b.Metadata().Copy()

	var v resource.Version

	ma.SetVersion(v)
	mb.SetVersion(v)
	ma.Finalizers().Set(resource.Finalizers{})
	mb.Finalizers().Set(resource.Finalizers{})

	if !ma.Equal(mb) {
		return false
	}

	type equaler interface{ Equal(any) bool }

	sa, ok := a.Spec().(equaler)

	return ok && sa.Equal(b.Spec())
}

func (st *rulesState) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	a, _, err := st.check(ctx, ptr.Namespace(), ptr.Type())
	if err != nil {
		return err
	}

	res, err := st.inner.Get(ctx, ptr)
	if err != nil {
		return err
	}

	if a.readOnly {
		return status.Errorf(codes.PermissionDenied, "infra providers are not allowed to destroy %q resources", ptr.Type())
	}

	if a.providerID != "" && !visible(res, a.providerID) {
		return status.Error(codes.NotFound, "not found")
	}

	return st.inner.Destroy(ctx, ptr, opts...)
}

func (st *rulesState) filter(ctx context.Context, providerID string, out chan<- state.Event) chan state.Event {
	in := make(chan state.Event)

	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-in:
				if ev.Resource != nil && (ev.Type == state.Created || ev.Type == state.Updated || ev.Type == state.Destroyed) &&
					!visible(ev.Resource, providerID) {
					continue
				}

				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	return in
}

func (st *rulesState) Watch(ctx context.Context, ptr resource.Pointer, ch chan<- state.Event, opts ...state.WatchOption) error {
	a, _, err := st.check(ctx, ptr.Namespace(), ptr.Type())
	if err != nil {
		return err
	}

	if a.providerID != "" {
		return st.inner.Watch(ctx, ptr, st.filter(ctx, a.providerID, ch), opts...)
	}

	return st.inner.Watch(ctx, ptr, ch, opts...)
}

func (st *rulesState) WatchKind(ctx context.Context, kind resource.Kind, ch chan<- state.Event, opts ...state.WatchKindOption) error {
	a, _, err := st.check(ctx, kind.Namespace(), kind.Type())
	if err != nil {
		return err
	}

	if a.providerID != "" {
		return st.inner.WatchKind(ctx, kind, st.filter(ctx, a.providerID, ch), opts...)
	}

	return st.inner.WatchKind(ctx, kind, ch, opts...)
}

func (st *rulesState) WatchKindAggregated(ctx context.Context, kind resource.Kind, ch chan<- []state.Event, opts ...state.WatchKindOption) error {
	a, _, err := st.check(ctx, kind.Namespace(), kind.Type())
	if err != nil {
		return err
	}

	if a.providerID != "" {
		return st.inner.WatchKindAggregated(ctx, kind, st.filterAggregated(ctx, a.providerID, ch), opts...)
	}

	return st.inner.WatchKindAggregated(ctx, kind, ch, opts...)
}

// filterAggregated drops, from each batch, the events of resources of other providers
// (bootstrapped and error events have no resource and pass), as Omni does.
func (st *rulesState) filterAggregated(ctx context.Context, providerID string, out chan<- []state.Event) chan []state.Event {
	in := make(chan []state.Event)

	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case batch := <-in:
				kept := make([]state.Event, 0, len(batch))

				for _, ev := range batch {
					if ev.Resource != nil && (ev.Type == state.Created || ev.Type == state.Updated || ev.Type == state.Destroyed) &&
						!visible(ev.Resource, providerID) {
						continue
					}

					kept = append(kept, ev)
				}

				select {
				case out <- kept:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	return in
}
