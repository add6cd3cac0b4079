#!/usr/bin/env bash
# Installs what `make test` needs when it is missing. Safe to run repeatedly.
set -euo pipefail

GO=${GO:-go}
GOBIN=$("$GO" env GOPATH)/bin
STATICCHECK_VERSION=v0.8.2

need_go_tool() { # name module@version
	local name=$1 mod=$2
	if [ -x "$GOBIN/$name" ] && "$GO" version -m "$GOBIN/$name" 2>/dev/null | grep -q "${mod#*@}"; then
		return
	fi
	echo "== installing $name ($mod)"
	"$GO" install "$mod"
}

# Debian packages the suite needs, as "command:package" pairs: real peers
# no one here wrote (kamailio plays a partner's edge in test/dmz).
DEB_NEEDS=(
	"git:git"
	"turnutils_uclient:coturn"
	"baresip:baresip"
	"sipp:sip-tester"
	"stunnel:stunnel4"
	"kamailio:kamailio"
	"ip:iproute2"
)

missing=()
for pair in "${DEB_NEEDS[@]}"; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# Kamailio's TLS module is its own package (test/dmz: a partner's edge).
ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || missing+=("kamailio-tls-modules")
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing Debian packages: ${missing[*]}"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

need_go_tool staticcheck "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
"$GO" mod download
