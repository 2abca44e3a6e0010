#!/bin/sh
# Root filesystem of dforge-test/base:SUITE (DESIGN §8). No container registry is reachable but
# Debian's mirror is: debootstrap a minbase SUITE (bookworm, trixie, ...), tidy it for containers,
# tar it to OUT.tar. test/helpers/test-images.ts imports that tarball and builds the sibling
# Dockerfiles FROM it (each Dockerfile's FROM line names its suite); each runs apt-get install
# inside its build container. Needs root and the Debian package debootstrap (whose release
# scripts and keyring must know SUITE; bookworm's know trixie).
set -eu

[ $# -eq 2 ] || { echo "usage: $0 SUITE OUT.tar" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: debootstrap and chroot need root" >&2; exit 1; }
suite=$1
out=$2
case $suite in '' | *[!a-z]*) echo "$0: not a Debian suite name: $suite" >&2; exit 2 ;; esac
# debootstrap and chroot live in sbin, which a non-login PATH may lack.
PATH=/usr/sbin:/sbin:$PATH

root=$(mktemp -d "${TMPDIR:-/tmp}/dforge-base.XXXXXX")
# --one-file-system: a failed debootstrap can leave /proc or /sys mounted inside the target.
trap 'rm -rf --one-file-system "$root"' EXIT
trap 'exit 130' INT TERM

debootstrap --variant=minbase "$suite" "$root" http://deb.debian.org/debian

# Packages installed during an image build must not try to start their services.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
# Package lists go stale on the mirror; every image build runs apt-get update itself.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*

tar --numeric-owner -C "$root" -c -f "$out" .
