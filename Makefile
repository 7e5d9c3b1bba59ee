# tally: `make run` starts everything locally, `make test` proves it.
SHELL := /bin/bash
GO ?= go
GOLANGCI_VERSION := v2.15.0
# promtool, for deploy/'s rule checks and rule unit tests (the Prometheus release 3.16's module).
PROMTOOL_VERSION := v0.316.0
REDOCLY_VERSION := 2.77.0
GOBIN := $(CURDIR)/bin
# The version tally_build_info reports: the git tag or commit, -dirty with local changes.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build run test test-citus citus-tests lint openapi-lint gotest acceptance fuzz bench chaos chaos-failover chaos-instances clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-X main.version=$(VERSION)" -o bin/tally ./cmd/tally

run: build
	./bin/tally dev

# The Go tests and the acceptance suite run under internal/testenv, which starts a private
# PostgreSQL and an embedded NATS when TEST_DATABASE_URL and NATS_URL are unset and nothing
# answers on 127.0.0.1:5432 and :4222, and stops them at the end. As root it installs the
# Python test packages and wrk (bench's load through another client) from Debian's packages
# when missing; otherwise it prints the command to run.
test: lint
	$(GO) run ./internal/testenv -python /usr/bin/python3 -commands wrk -- $(MAKE) --no-print-directory gotest acceptance

# tally on a private Citus cluster of a coordinator and two workers, which internal/testenv
# starts from the local PostgreSQL with Citus (../shared/vendor/citus/build.sh, or Citus's
# packages) and stops at the end. TALLY_REQUIRE_CITUS=1 makes every Citus test fail rather
# than skip when Citus or the cluster is missing.
test-citus: build
	TALLY_REQUIRE_CITUS=1 $(GO) run ./internal/testenv -citus 2 -python /usr/bin/python3 -- $(MAKE) --no-print-directory citus-tests

# The store's tests (write path, reads, concurrency on two pools) on a distributed database,
# the plans of every request, the cluster harness, the HTTP race across two instances, the
# per-user event feed and the relay by slices (restarts, two relays, shard moves), the console's
# events panel on the per-user feed (in chromium), tally dev
# --citus and the fault runs (a rebalance onto a new worker and a killed worker, each under
# load on private clusters of their own), then
# the acceptance suite against two instances of bin/tally on the coordinator, followed by a
# load on both instances that tally bench --verify audits. Write batching is off on Citus,
# so the batcher's own tests (batch_test.go) are not among them.
CITUS_POSTGRES_TESTS := $(shell grep -ho '^func Test[A-Za-z0-9_]*' postgres/store_test.go postgres/users_test.go postgres/citus_test.go postgres/outbox_citus_test.go postgres/dberr_test.go | sed 's/func //' | paste -sd'|')
citus-tests:
	$(GO) test -race -count=1 -timeout 15m -parallel 4 -run '^($(CITUS_POSTGRES_TESTS))$$' ./postgres
	$(GO) test -race -count=1 -timeout 10m -run 'Citus' ./internal/devenv
	$(GO) test -race -count=1 -timeout 10m -run '^(TestCreateUserRaceAcrossReplicas|TestCitus.*)$$' ./httpapi
	$(GO) test -race -count=1 -timeout 15m -run '^TestCitus' ./relay
	$(GO) test -race -count=1 -timeout 15m -run 'Citus' ./cmd/tally
	$(GO) test -race -count=1 -timeout 10m -run '^TestConsoleEventsOnCitus$$' ./web
	ACCEPTANCE_INSTANCES=2 ACCEPTANCE_THEN='bin/tally bench --url "$$TALLY_URLS" --database-url "$$DATABASE_URL" --users 50 --workers 8 --duration 10s --verify' \
		./acceptance/run.sh

$(GOBIN)/golangci-lint-$(GOLANGCI_VERSION):
	GOBIN=$(GOBIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)
	mv $(GOBIN)/golangci-lint $@

lint: $(GOBIN)/golangci-lint-$(GOLANGCI_VERSION)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/golangci-lint-$(GOLANGCI_VERSION) run ./...
	@$(MAKE) --no-print-directory openapi-lint

# Redocly's recommended rules (redocly.yaml) over the OpenAPI document, as client generators
# read it. npx fetches the pinned CLI into npm's cache on the first run. Without npx the lint is
# skipped with a notice, except under CI=1 (.ci/run), where a skip would hide a failure.
openapi-lint:
	@if command -v npx >/dev/null; then \
		REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true npx --yes @redocly/cli@$(REDOCLY_VERSION) lint httpapi/openapi.json; \
	elif [ -n "$$CI" ]; then \
		echo "openapi-lint: npx (Node.js) is missing; CI needs it"; exit 1; \
	else \
		echo "openapi-lint: skipped, npx (Node.js) is missing"; \
	fi

# Coverage counts every package's statements exercised by any package's tests. The floor sits a
# little under what the suite reaches, so that deleting tests fails the build. httpapi's
# generated client (httpapi/internal/oapiclient) is a test subject, not tally's code: left out.
COVERAGE_FLOOR := 80
COVERED := ./ledger/...,./postgres/...,./httpapi,./relay/...,./cmd/...,./client/...,./internal/devenv/...,./internal/testenv/...

# promtool is built from the Prometheus module on its own, outside go.mod: the module would
# pull Kubernetes' client and a newer k8s.io/api into tally's build for one test's sake.
# remove_all_sd leaves out the service discoveries (cloud SDKs) that checking and testing rules
# never use. The first build takes minutes; the Go build cache keeps it after that.
$(GOBIN)/promtool-$(PROMTOOL_VERSION):
	GOBIN=$(GOBIN)/promtool.tmp $(GO) install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(GOBIN)/promtool.tmp/promtool $@
	rmdir $(GOBIN)/promtool.tmp

gotest: $(GOBIN)/promtool-$(PROMTOOL_VERSION)
	@mkdir -p bin
	PROMTOOL=$(GOBIN)/promtool-$(PROMTOOL_VERSION) $(GO) test -race -count=1 -coverpkg=$(COVERED) -coverprofile=bin/coverage.out ./...
	@$(GO) tool cover -func=bin/coverage.out | tail -1 | awk -v floor=$(COVERAGE_FLOOR) \
		'{ sub("%", "", $$3); printf "coverage %s%% (floor %s%%)\n", $$3, floor; if ($$3 + 0 < floor) exit 1 }'

acceptance: build
	./acceptance/run.sh

fuzz:
	$(GO) test ./ledger -run='^$$' -fuzz=FuzzParseAmount -fuzztime=30s
	$(GO) test ./ledger -run='^$$' -fuzz=FuzzParseTime -fuzztime=30s

# Measurements and fault injection: minutes long, never part of `make test`.
bench:
	bench/run.sh

chaos: chaos-failover chaos-instances

# A private primary and standby (never the shared cluster): the primary is SIGKILLed under
# load and the standby promoted, with synchronous replication (no acknowledged write may be
# lost: a loss fails the target), then with asynchronous replication (what it loses is
# reported). Results in bin/chaos/failover-*/ (summary.txt, bench.log).
chaos-failover: build
	$(GO) run ./bench/failover -tally bin/tally -out bin/chaos/failover-sync
	$(GO) run ./bench/failover -tally bin/tally -out bin/chaos/failover-async -async

# Instances, relays and NATS killed under load; restarts the local PostgreSQL cluster once.
chaos-instances:
	bench/chaos.sh

clean:
	rm -rf bin .data

# The container and Kubernetes manifests alone: the compose file loads with the Compose
# Specification's own loader and every kustomize overlay renders and pass deploy/'s checks
# (both run in-process in that test; `make test` runs it too). To read a
# rendering: `go run sigs.k8s.io/kustomize/kustomize/v5@v5.7.1 build deploy/k8s/overlays/prod`.
.PHONY: manifests
manifests: $(GOBIN)/promtool-$(PROMTOOL_VERSION)
	PROMTOOL=$(GOBIN)/promtool-$(PROMTOOL_VERSION) $(GO) test -count=1 ./deploy/
