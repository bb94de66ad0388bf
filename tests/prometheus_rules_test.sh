#!/usr/bin/env bash
# The Prometheus rules (deploy/prometheus): `promtool check rules`, the unit
# tests of `promtool test rules`, and that every alert has a test where it
# fires and one where it stays quiet. promtool comes with Debian's
# prometheus package (scripts/install_deps.sh).
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
dir="$root/deploy/prometheus"
command -v promtool >/dev/null || {
  echo "promtool not found: install Debian's prometheus (scripts/install_deps.sh)" >&2
  exit 1
}
promtool check rules "$dir/switchyard-rules.yaml"
(cd "$dir" && promtool test rules switchyard-rules.test.yaml)
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$dir/switchyard-rules.yaml")
[ -n "$alerts" ] || { echo "no alerts found in switchyard-rules.yaml" >&2; exit 1; }
# alertname lines paired with the exp_alerts line after them: "NAME quiet"
# or "NAME fires".
cases=$(awk '/alertname:/ {name=$2} /exp_alerts:/ {print name, ($2 == "[]" ? "quiet" : "fires")}' \
  "$dir/switchyard-rules.test.yaml")
missing=0
for a in $alerts; do
  for kind in fires quiet; do
    if ! grep -qx "$a $kind" <<<"$cases"; then
      echo "alert $a has no test case where it $( [ $kind = fires ] && echo fires || echo stays quiet)" >&2
      missing=1
    fi
  done
done
[ $missing -eq 0 ]
echo "prometheus rules: $(wc -w <<<"$alerts") alerts, each with a firing and a quiet test case"
