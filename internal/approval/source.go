package approval

import "context"

// Source is where approval requests come from. The HTTP API
// (POST /api/v1/approvals, see Routes) is the first; a watcher of
// Teleport's access requests is meant to be the next: it would submit each
// new request and answer Teleport from the outcome. Sources never post to
// Mattermost or decide themselves: they only submit.
type Source interface {
	// Name says where requests come from ("http", "teleport").
	Name() string
	// Run submits requests until ctx ends.
	Run(ctx context.Context, submit Submit) error
}

// Submit hands a request to the service on behalf of client.
type Submit func(ctx context.Context, client string, r Request) (*Approval, error)

// httpSource is the HTTP API as a Source: its handlers submit as they are
// called, so Run only waits.
type httpSource struct{}

func (httpSource) Name() string { return "http" }

func (httpSource) Run(ctx context.Context, _ Submit) error {
	<-ctx.Done()
	return nil
}

// RunSources runs every source, each submitting through Create, until ctx
// ends; a source that fails is logged, the others go on.
func (s *Service) RunSources(ctx context.Context, sources ...Source) {
	for _, src := range append([]Source{httpSource{}}, sources...) {
		go func(src Source) {
			if err := src.Run(ctx, s.Create); err != nil && ctx.Err() == nil {
				s.o.Logger.Error("approvals: a request source stopped", "source", src.Name(), "err", err)
			}
		}(src)
	}
}
