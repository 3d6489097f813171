#!/usr/bin/env bash
# CI's check of the Debian package (README.md "Install"), as root: build it, install it
# with apt-get, validate the installed configuration, run the installed daemon as the
# consoled user with an exec guest until its log has the guest's bytes, stop it with
# SIGTERM (exit status 0 expected), then purge the package so that nothing of it (the
# libvirt hook above all) stays for the tests that follow. Any failure exits non-zero.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d "${TMPDIR:-/tmp}/consoled-ci-package.XXXXXX")
chmod 0755 "$work" # the consoled user reads the test configuration in it
daemon=
cleanup() {
  local status=$?
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then kill -KILL "$daemon" || true; fi
  if [ "$status" -ne 0 ] && [ -f "$work/daemon.log" ]; then
    echo "ci-package: the daemon's log:" >&2
    tail -n 40 "$work/daemon.log" >&2
  fi
  if dpkg -s consoled >/dev/null 2>&1; then apt-get purge -y -q consoled >/dev/null || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
say() { printf 'ci-package: %s\n' "$*"; }
fail() {
  say "FAILED: $*" >&2
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if dpkg -s consoled >/dev/null 2>&1; then
  say "purging the consoled package an earlier run left"
  apt-get purge -y -q consoled >/dev/null
fi

t=$(now)
deb=$(bash scripts/build-deb.sh --out "$work" | tail -n 1)
build_s=$(since "$t")
[ -f "$deb" ] || fail "build-deb.sh made no package"

t=$(now)
apt-get install -y -q "$deb" >"$work/apt.log" 2>&1 || {
  cat "$work/apt.log" >&2
  fail "apt-get install $deb"
}
install_s=$(since "$t")
getent passwd consoled >/dev/null || fail "the postinst made no consoled user"
[ "$(stat -c %U /var/lib/consoled)" = consoled ] || fail "/var/lib/consoled is not the consoled user's"

consoled check-config /etc/consoled/consoled.yaml

port=$(node -e "const s=require('node:net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
config="$work/consoled.yaml"
cat >"$config" <<EOF
stateDir: /var/lib/consoled
listen: { host: 127.0.0.1, port: $port }
guests:
  - id: ci-guest
    source: { type: exec, command: [/usr/bin/node, /usr/lib/consoled/dist/sidecar/demo/demo-guest.js] }
EOF
chmod 0644 "$config"
consoled check-config "$config"

# setpriv executes the daemon in place (runuser would stay as its parent), so $daemon is
# the daemon's own PID and `wait` returns its own exit status.
t=$(now)
setpriv --reuid consoled --regid consoled --init-groups --reset-env -- \
  /usr/bin/consoled --config "$config" >"$work/daemon.log" 2>&1 &
daemon=$!
url="http://127.0.0.1:$port"
log=/var/lib/consoled/guests/ci-guest/console.log
for _ in $(seq 300); do
  kill -0 "$daemon" 2>/dev/null || fail "the daemon exited"
  if curl -fsS "$url/healthz" >/dev/null 2>&1 && [ -s "$log" ]; then break; fi
  sleep 0.1
done
curl -fsS "$url/healthz" >/dev/null || fail "no answer on $url/healthz"
[ -s "$log" ] || fail "$log has no bytes"
[ "$(stat -c %U "$log")" = consoled ] || fail "$log is not the consoled user's"
consolectl --url "$url" --token-file /var/lib/consoled/admin-token logs ci-guest --tail 4096 >"$work/guest.txt"
grep -q 'Linux version' "$work/guest.txt" || fail "consolectl logs did not return the guest's boot log"
ready_s=$(since "$t")

kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
daemon=
[ "$status" -eq 0 ] || fail "the daemon exited with status $status after SIGTERM"

t=$(now)
apt-get purge -y -q consoled >/dev/null
purge_s=$(since "$t")
[ ! -e /usr/lib/consoled ] || fail "/usr/lib/consoled is left after purge"
[ ! -e /var/lib/consoled ] || fail "/var/lib/consoled is left after purge"

say "ok: $(basename "$deb") $(du -k "$deb" | cut -f1) KiB; build ${build_s} s, apt-get install ${install_s} s," \
  "daemon up with the guest's log ${ready_s} s (${log} $(wc -c <"$work/guest.txt") bytes read back), exit 0 on SIGTERM," \
  "purge ${purge_s} s"
