# apigateway — the two commands a fresh machine needs are `make run` and `make test`.
# Both install what is missing (cmake for Pingora's zlib-ng, redis-server for the shared
# rate-limit tests, dnsmasq for the DNS discovery tests, etcd for fleet mode, protoc for the
# etcd client's build, chromium for the status page test; the Rust toolchain must exist).

CARGO   ?= cargo
CONFIG  ?= conf/gateway.yaml
RELEASE := target/release

.PHONY: run test deps build lint deny unit bench bench-smoke soak fuzz install clean

## make run: build in release mode, start the demo services (users, products, orders,
## products-v2 on 127.0.0.1:3001-3004, the gRPC greeter on 3005) and the gateway on 0.0.0.0:8080 (HTTP) and 8443 (HTTPS, HTTP/2; a demo
## certificate is generated into conf/tls/ on first run). Ctrl-C stops everything.
run: deps build
	@$(RELEASE)/examples/demo_services --write-cert conf/tls
	@$(RELEASE)/examples/demo_services & demo=$$!; \
	trap 'kill $$demo 2>/dev/null; wait $$demo 2>/dev/null' EXIT INT TERM; \
	echo "gateway on http://localhost:8080 and https://localhost:8443 — try: curl http://localhost:8080/api/public or curl -k --http2 https://localhost:8443/api/public or target/release/examples/grpc_client Ada"; \
	$(RELEASE)/apigateway -c $(CONFIG)

## make test: formatting, lints, dependency checks, unit and integration tests (real
## upstreams, real gateway).
test: deps lint deny unit

build:
	$(CARGO) build --release --bin apigateway --example demo_services --example grpc_client

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

## Licenses, version floors of crates with advisories, sources of every dependency
## (deny.toml), and RustSec advisories against ../shared/advisory-db when it exists
## (.ci/advisories.sh). Installs cargo-deny on first use.
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked
	$(CARGO) deny check licenses bans sources
	.ci/advisories.sh

## make bench: gateway vs nginx (and HAProxy) on this machine; see bench/README.md.
bench: deps
	bench/run.sh

bench-smoke: deps
	bench/run.sh --smoke

## make soak: 10 minutes of mixed traffic, RSS and open files sampled (bench/soak.sh).
soak: deps
	bench/soak.sh

## make fuzz: every cargo-fuzz target for FUZZ_SECONDS (30) each; needs a nightly toolchain.
fuzz: deps
	fuzz/run.sh

## Installs system packages the build needs: apt-get when root, otherwise prints the command.
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v make >/dev/null 2>&1 || missing="$$missing make"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v ss >/dev/null 2>&1 || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing — run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

## make install: binary to /usr/local/bin, config to /etc/apigateway (pid file and upgrade
## socket pointed into /run/apigateway, as the unit expects), a system user, the systemd unit.
## Then: systemctl daemon-reload && systemctl enable --now apigateway.
install: build
	install -D -m 0755 $(RELEASE)/apigateway /usr/local/bin/apigateway
	install -d -m 0755 /etc/apigateway
	[ -f /etc/apigateway/gateway.yaml ] || sed \
	  -e 's#pid_file: .*#pid_file: /run/apigateway/apigateway.pid#' \
	  -e 's#upgrade_sock: .*#upgrade_sock: /run/apigateway/upgrade.sock#' \
	  $(CONFIG) > /etc/apigateway/gateway.yaml
	[ -f /etc/apigateway/users.yaml ] || install -m 0640 conf/users.yaml /etc/apigateway/users.yaml
	[ -f /etc/apigateway/consumers.yaml ] || install -m 0640 conf/consumers.yaml /etc/apigateway/consumers.yaml
	id -u apigateway >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin apigateway
	chgrp apigateway /etc/apigateway/users.yaml /etc/apigateway/consumers.yaml
	# A self-signed placeholder so the shipped `tls:` section loads; replace with real files.
	$(RELEASE)/examples/demo_services --write-cert /etc/apigateway/tls
	chgrp apigateway /etc/apigateway/tls/localhost.key && chmod 0640 /etc/apigateway/tls/localhost.key
	/usr/local/bin/apigateway -t -c /etc/apigateway/gateway.yaml
	install -D -m 0644 systemd/apigateway.service /etc/systemd/system/apigateway.service

clean:
	$(CARGO) clean
