package main

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/omni/client/pkg/jointoken"
	"github.com/siderolabs/omni/client/pkg/omni/resources/infra"
	siderolinkres "github.com/siderolabs/omni/client/pkg/omni/resources/siderolink"
	"github.com/siderolabs/omni/client/pkg/siderolink"
)

// defineProviderJoinConfig registers the ProviderJoinConfig resource definition in the
// meta namespace, as an Omni that has the V2 join flow does: providers look it up to pick
// their join flow.
func (h *harness) defineProviderJoinConfig(ctx context.Context) error {
	rd, err := meta.NewResourceDefinition(siderolinkres.NewProviderJoinConfig("").ResourceDefinition())
	if err != nil {
		return err
	}

	return h.inner.Create(ctx, rd)
}

// legacyJoinConfig renders the machine configuration the Go provider serves on an older
// Omni, from the stored ConnectionParams (default/siderolink-config), with the upstream
// module and the options of the Go provider's machineconfig package.
func (h *harness) legacyJoinConfig(ctx context.Context, c *command) (map[string]any, error) {
	params, err := safe.StateGetByID[*siderolinkres.ConnectionParams](ctx, state.WrapCore(h.inner), siderolinkres.ConfigID) //nolint:staticcheck
	if err != nil {
		return nil, fmt.Errorf("connection params: %w", err)
	}

	spec := params.TypedSpec().Value

	opts, err := siderolink.NewJoinOptions(
		siderolink.WithJoinToken(spec.JoinToken),
		siderolink.WithMachineAPIURL(spec.ApiEndpoint),
		siderolink.WithEventSinkPort(int(spec.EventsPort)),
		siderolink.WithLogServerPort(int(spec.LogsPort)),
		siderolink.WithProvider(infra.NewProvider(c.ID)),
		siderolink.WithJoinTokenVersion(jointoken.Version1),
	)
	if err != nil {
		return nil, err
	}

	rendered, err := opts.RenderJoinConfig()
	if err != nil {
		return nil, err
	}

	return map[string]any{"config": string(rendered)}, nil
}
