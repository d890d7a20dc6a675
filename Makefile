# mmgate — `make test` runs everything (unit + end-to-end against a real Mattermost),
# installing what it needs. `make bench` prints the performance figures.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
PEERS_ENV := test/peers/.env
E2E_SUMMARY := $(CURDIR)/e2e-summary.txt

.PHONY: all build test unit e2e peers peers-stop bench fuzz lint vet fmt clean

all: build

build:
	$(GO) build -trimpath -o bin/mmgate ./cmd/mmgate

# Everything: static checks, unit tests with the race detector, then the
# end-to-end suite against the real peers (installed and started if missing).
# The e2e suite runs after the others: it stops and restarts the shared Mattermost.
test: lint peers
	set -a && . $(PEERS_ENV) && set +a && MMGATE_E2E=1 $(GO) test -race -count=1 -timeout 20m ./internal/... ./cmd/...
	@rm -f $(E2E_SUMMARY)
	@# The summary is printed whether the suite passed or not: a failure is when it matters.
	set -a && . $(PEERS_ENV) && set +a && MMGATE_E2E=1 MMGATE_E2E_SUMMARY=$(E2E_SUMMARY) $(GO) test -race -count=1 -timeout 45m ./test/...; \
	rc=$$?; echo "--- fault tests (lost and duplicated must be 0):"; cat $(E2E_SUMMARY) 2>/dev/null || echo "(no summary written)"; exit $$rc

unit:
	$(GO) test -race -count=1 ./internal/... ./cmd/...

e2e: peers
	set -a && . $(PEERS_ENV) && set +a && MMGATE_E2E=1 MMGATE_E2E_SUMMARY=$(E2E_SUMMARY) $(GO) test -count=1 -timeout 45m -v ./test/e2e/...

peers:
	bash test/peers/up.sh

peers-stop:
	bash test/peers/mattermost.sh stop

bench: peers
	bash test/bench/run.sh

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 60s ./internal/mailparse
	$(GO) test -run '^$$' -fuzz FuzzSession -fuzztime 60s ./internal/intake/smtp
	$(GO) test -run '^$$' -fuzz FuzzAuthenticate -fuzztime 60s ./internal/intake/postback
	$(GO) test -run '^$$' -fuzz FuzzUntrustedInputs -fuzztime 60s ./internal/sso
	$(GO) test -run '^$$' -fuzz FuzzCallbacks -fuzztime 60s ./internal/approval
	$(GO) test -run '^$$' -fuzz FuzzLinkInputs -fuzztime 60s ./internal/account

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
