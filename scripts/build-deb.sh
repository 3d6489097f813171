#!/usr/bin/env bash
# Builds the Debian package consoled_<version>_<arch>.deb from this repository
# (README.md "Install"): the built code and its production node_modules under
# /usr/lib/consoled, consoled and consolectl in /usr/bin, the systemd unit, sysusers and
# tmpfiles entries, the example configuration as a conffile, and the libvirt hook.
#
#   scripts/build-deb.sh [--out DIR]      (npm run package:deb)
#
# Needs dpkg-deb, the Node.js the package is for (its major version goes into Depends),
# npm, and a C++ toolchain with python3 to build node-pty and unix-dgram.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -h | --help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$root"

version=$(node -p "require('./package.json').version")
arch=$(dpkg --print-architecture)
node_major=$(node -p "process.versions.node.split('.')[0]")
maintainer=${DEB_MAINTAINER:-consoled developers <consoled@example.org>}
deb="$out/consoled_${version}_${arch}.deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/consoled-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
pkg="$work/root"
app="$pkg/usr/lib/consoled"
say() { printf 'build-deb: %s\n' "$*"; }

# 1. The built code, from a clean dist/ so that nothing another build left is shipped.
say "building dist/"
rm -rf dist
npm run build --silent
install -d "$app"
cp -r dist "$app/"
# The source maps point at TypeScript sources that the package does not hold.
find "$app/dist" -name '*.map' -delete
chmod 0755 "$app/dist/sidecar/bin/consoled.js" "$app/dist/cli/consolectl.js"
cp package.json package-lock.json "$app/"
doc="$pkg/usr/share/doc/consoled"
install -d "$doc"
cp -r README.md SECURITY.md docs "$doc/"
[ -f LICENSE ] && cp LICENSE "$doc/"
# The unit's Documentation= and an operator's habit find the README beside the code.
ln -s ../../share/doc/consoled/README.md "$app/README.md"

# 2. The production dependencies, at the lock's versions. The staging tree is outside the
# repository, so nothing resolves to the repository's own node_modules by accident.
say "installing the production node_modules (npm ci --omit=dev)"
(
  cd "$app"
  # node-gyp passes these to the compiler and linker: Debian's hardening flags.
  export CFLAGS="${CFLAGS:-} -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2"
  export CXXFLAGS="${CXXFLAGS:-} -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2"
  export LDFLAGS="${LDFLAGS:-} -Wl,-z,relro -Wl,-z,now"
  npm ci --omit=dev --no-audit --no-fund --prefer-offline --loglevel=error ||
    npm install --omit=dev --no-audit --no-fund --prefer-offline --loglevel=error
  # npm 11 may hold back install scripts (package.json "allowScripts"): build the native
  # modules when they did not load.
  node -e "require('node-pty'); require('unix-dgram')" 2>/dev/null ||
    npm rebuild node-pty unix-dgram --loglevel=error
)

# What only building needs: sources, headers, other platforms' prebuilt binaries,
# object files, type declarations, tests and documents (licence files stay).
nm="$app/node_modules"
rm -rf "$nm/node-pty/"{src,deps,third_party,node-addon-api,prebuilds,scripts,typings,binding.gyp}
for module in node-pty unix-dgram; do
  [ -d "$nm/$module/build" ] || continue
  find "$nm/$module/build" -mindepth 1 -maxdepth 1 ! -name Release -exec rm -rf {} +
  find "$nm/$module/build/Release" -mindepth 1 ! -name '*.node' -exec rm -rf {} +
done
rm -rf "$nm/unix-dgram/"{src,test,binding.gyp}
# C++ headers that only the build includes (nothing requires them at run time).
rm -rf "$nm/nan" "$nm/node-addon-api"
# TypeScript sources and declarations, source maps, documents and repository files.
find "$nm" \( -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.map' -o -iname '*.md' \
  -o -name '*.html' -o -name '.git*' -o -name '.npmignore' -o -name '.eslintrc*' \
  -o -name '.travis.yml' -o -name '.editorconfig' \) -type f -delete
find "$nm" -depth -type d \( -name test -o -name tests -o -name .github -o -name .husky \) -exec rm -rf {} +
find "$nm" -depth -type d -empty -delete
# Shared objects: not executable, without debugging symbols.
find "$nm" -name '*.node' -type f -exec chmod 0644 {} + \
  -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +

say "checking the native modules of the staged tree"
node "$root/scripts/check-native-modules.mjs" "$app"

# 3. Commands, systemd files, configuration, libvirt hook, documents.
install -d "$pkg/usr/bin"
for command in consoled:dist/sidecar/bin/consoled.js consolectl:dist/cli/consolectl.js; do
  printf '#!/bin/sh\nexec /usr/bin/node /usr/lib/consoled/%s "$@"\n' "${command#*:}" >"$pkg/usr/bin/${command%%:*}"
  chmod 0755 "$pkg/usr/bin/${command%%:*}"
done
install -D -m 0644 systemd/consoled.service "$pkg/usr/lib/systemd/system/consoled.service"
install -D -m 0644 systemd/consoled.sysusers.conf "$pkg/usr/lib/sysusers.d/consoled.conf"
install -D -m 0644 systemd/consoled.tmpfiles.conf "$pkg/usr/lib/tmpfiles.d/consoled.conf"
install -D -m 0640 systemd/consoled.yaml.example "$pkg/etc/consoled/consoled.yaml"
conffiles=(/etc/consoled/consoled.yaml)

hook_js=dist/cli/libvirt-hook.js
if [ -f "$hook_js" ]; then
  chmod 0755 "$app/$hook_js"
  hook="$pkg/etc/libvirt/hooks/qemu.d/consoled"
  install -d "$(dirname "$hook")"
  # A removed (not purged) package leaves this conffile behind: it then exits 0, so that a
  # libvirt operation never fails for consoled's sake.
  cat >"$hook" <<EOF
#!/bin/sh
# consoled's libvirt QEMU hook (README.md "Install"); the code is $hook_js.
[ -x /usr/bin/node ] && [ -f /usr/lib/consoled/$hook_js ] || exit 0
exec /usr/bin/node /usr/lib/consoled/$hook_js "\$@"
EOF
  chmod 0755 "$hook"
  conffiles+=(/etc/libvirt/hooks/qemu.d/consoled)
else
  say "no $hook_js in this build: the package has no libvirt hook"
fi

install -m 0644 scripts/deb/copyright "$doc/copyright"
install -D -m 0644 scripts/deb/lintian-overrides "$pkg/usr/share/lintian/overrides/consoled"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
date=$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
printf 'consoled (%s) unstable; urgency=medium\n\n  * Built from commit %s of the consoled repository.\n\n -- %s  %s\n' \
  "$version" "$commit" "$maintainer" "$date" | gzip -9n >"$doc/changelog.gz"

# 4. Control files. The native modules make the package architecture-specific, and
# unix-dgram is built with nan for this Node.js major version's ABI only.
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$work/shlibs/debian"
  printf 'Source: consoled\n\nPackage: consoled\nArchitecture: any\n' >"$work/shlibs/debian/control"
  shlibs=$(cd "$work/shlibs" && find "$nm" -name '*.node' -type f -print0 |
    xargs -0 dpkg-shlibdeps -O 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
else
  say "no dpkg-shlibdeps (dpkg-dev): the native modules' libraries go into Depends unversioned"
  shlibs='libc6, libgcc-s1, libstdc++6'
fi
install -d -m 0755 "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<EOF
Package: consoled
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: nodejs (>= $node_major), nodejs (<< $((node_major + 1)))${shlibs:+, $shlibs}, systemd-sysusers | adduser
Suggests: redis-server, libvirt-daemon-system
Section: admin
Priority: optional
Description: per-host console-log sidecar for virtual-machine hosts
 consoled attaches to each guest's serial chardev (KVM/QEMU, libvirt,
 OpenStack nova), captures every byte without ever blocking the guest, keeps
 rotating local logs with offsets that never reset, serves an interactive
 WebSocket console, and replicates the log to a shared Redis stream.
 .
 The package bundles its npm dependencies, with the native modules node-pty
 and unix-dgram built for Node.js $node_major on $arch: it needs nodejs $node_major
 (Debian 12 has 18; NodeSource's Debian repository has $node_major).
EOF
printf '%s\n' "${conffiles[@]}" >"$pkg/DEBIAN/conffiles"
install -m 0755 scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$pkg/DEBIAN/"

# Modes: directories 0755, files not writable by group or others (umask-proof).
find "$pkg" -type d -exec chmod 0755 {} +
chmod -R go-w,a+rX "$pkg"
chmod 0640 "$pkg/etc/consoled/consoled.yaml"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
  xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/md5sums" "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
if [ "${LINTIAN:-0}" = 1 ]; then lintian --pedantic "$deb" || true; fi
say "$(basename "$deb"): $(du -h "$deb" | cut -f1) ($(sed -n 's/^Installed-Size: //p' "$pkg/DEBIAN/control") KiB installed)"
echo "$deb"
