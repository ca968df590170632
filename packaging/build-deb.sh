#!/usr/bin/env bash
# Build dist/aitherfwd_<version>_all.deb with standard Debian tooling (dpkg-buildpackage,
# debhelper, pybuild) and run lintian on it.
#
# The Debian packaging lives in packaging/debian/ rather than a debian/ directory at the
# top of the repository: the tree stays a plain Python project, and the one place where
# packaging and code meet is this script. It assembles a build tree under build/deb/:
#   - the project's files (git's tracked and untracked-but-not-ignored files, so a
#     working copy builds what you see; a plain copy when there is no git),
#   - packaging/debian/ as debian/,
#   - systemd/aitherfwd.service as debian/aitherfwd.service (one source for the unit),
#   - debian/changelog generated from pyproject.toml's version (one source for it), dated
#     by the last commit so the build is reproducible.
# The package is "3.0 (native)": upstream and packaging are the same project.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own toolchain and interpreter (/usr/bin/python3), never a python found earlier
# on PATH (a pyenv or a venv): the package is built for and against the system Python.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
ROOT=$PWD

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DATE=$(git log -1 --format=%cD 2>/dev/null || date -R)
BUILD=$ROOT/build/deb
SRC=$BUILD/aitherfwd-$VERSION

rm -rf "$BUILD"
mkdir -p "$SRC" "$ROOT/dist"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$SRC"
else
    tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git -cf - . \
        | tar -xf - -C "$SRC"
fi
rm -rf "$SRC/debian"
cp -a packaging/debian "$SRC/debian"
cp systemd/aitherfwd.service "$SRC/debian/aitherfwd.service"
cp systemd/aitherfwd-gateway.service "$SRC/debian/aitherfwd.aitherfwd-gateway.service"
cp systemd/aitherfwd-gateway.socket "$SRC/debian/aitherfwd.aitherfwd-gateway.socket"
cat > "$SRC/debian/changelog" <<CHANGELOG
aitherfwd ($VERSION) unstable; urgency=medium

  * Release $VERSION, built from the project's own packaging (packaging/debian).

 -- aitherfwd maintainers <maintainers@aitherfwd.org>  $DATE
CHANGELOG

cd "$SRC"
# Build dependencies come from debian/control itself (apt-get build-dep on the tree).
if ! dpkg-checkbuilddeps 2>/dev/null; then
    echo "build-deb: installing build dependencies from debian/control"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends "$SRC" >/dev/null
fi
# Source and binary (lintian checks both); -us -uc: no signatures.
dpkg-buildpackage -us -uc
cd "$BUILD"
DEB=aitherfwd_${VERSION}_all.deb
# lintian fails the build on errors and warnings; every override is explained in
# packaging/debian/aitherfwd.lintian-overrides.
lintian --fail-on error,warning --display-info \
    "aitherfwd_${VERSION}_$(dpkg --print-architecture).changes" 2>&1 | tee "$BUILD/lintian.log" || {
    echo "build-deb: lintian found problems (above, and in $BUILD/lintian.log)" >&2
    exit 1
}
cp "$DEB" "$ROOT/dist/$DEB"
echo "build-deb: dist/$DEB"
