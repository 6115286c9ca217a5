# shellcheck shell=bash
# tests/kvm/lib-prom.sh - scraping GET /metrics (the VM's API socket, godwitd's socket)
# in the tier-1 tests (t-api.sh, t-migrate-gate.sh, t-agent.sh).  Source tests/lib.sh first.

# prom_scrape SOCK OUT: GET /metrics on the UNIX socket SOCK; checks the status (200), the
# Content-Type (text/plain; version=0.0.4; charset=utf-8) and the page with promcheck.py
# (Debian's python3 and its prometheus_client parser, plus our own checks), and leaves the
# samples as JSON in OUT (the page in OUT.txt).  Returns 1 with the reason in $PROM_ERR.
prom_scrape() {
	local sock=$1 out=$2 hdr ct code
	PROM_ERR=
	code=$(curl -s --max-time 10 --unix-socket "$sock" -D "$out.hdr" -o "$out.txt" \
		-w '%{http_code}' http://localhost/metrics) || { PROM_ERR="curl failed ($code)"; return 1; }
	[ "$code" = 200 ] || { PROM_ERR="status $code: $(head -c 200 "$out.txt")"; return 1; }
	hdr=$(tr -d '\r' <"$out.hdr")
	ct=$(sed -n 's/^[Cc]ontent-[Tt]ype: //p' <<<"$hdr")
	[ "$ct" = "text/plain; version=0.0.4; charset=utf-8" ] ||
		{ PROM_ERR="Content-Type '$ct'"; return 1; }
	if ! /usr/bin/python3 "$ROOT/tests/kvm/promcheck.py" "$out.txt" >"$out" 2>"$out.err"; then
		PROM_ERR="format check: $(head -c 600 "$out.err")"
		return 1
	fi
}

# prom_val JSON NAME [LABEL=VALUE...]: the sum of the samples called NAME whose labels
# match every LABEL=VALUE (0 if none match).
prom_val() {
	local json=$1 name=$2 sel='.' kv
	shift 2
	for kv in "$@"; do
		sel+=" | select(.labels[\"${kv%%=*}\"] == \"${kv#*=}\")"
	done
	jq -r --arg n "$name" "[.[] | select(.name == \$n) | $sel | .value] | add // 0" "$json"
}

# prom_has JSON NAME [LABEL=VALUE...]: true if a sample NAME with those labels exists.
prom_has() {
	local json=$1 name=$2 sel='.' kv
	shift 2
	for kv in "$@"; do
		sel+=" | select(.labels[\"${kv%%=*}\"] == \"${kv#*=}\")"
	done
	jq -e --arg n "$name" "[.[] | select(.name == \$n) | $sel] | length > 0" "$json" >/dev/null
}
