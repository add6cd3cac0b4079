# Portcullis. `make test` is the one command that runs the whole suite on a
# fresh machine: it installs what the tests need when it is missing.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck

.PHONY: test deps lint unit fuzz build dev clean

test: deps lint unit

## deps: tools the suite needs (Go tools from the module proxy; Debian
## packages are added here as later capabilities need real peers).
deps:
	@./scripts/test-deps.sh

lint:
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet ./...
	@echo "== staticcheck"; $(STATICCHECK) ./...

unit:
	@echo "== go test"; $(GO) test -race -count=1 -timeout 15m ./...

## fuzz: run every fuzz target briefly (not part of `make test`; the seed
## corpora under testdata/fuzz are run by `make unit`).
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=60s ./internal/config/

build:
	$(GO) build -o bin/ ./cmd/...

dev:
	$(GO) run ./cmd/portcullis dev

clean:
	rm -rf bin var
