#!/bin/sh
# Installs the protocol peers the tests drive (Debian packages), where this machine allows it.
# Tests whose peer is still missing afterwards skip and say why.
set -u
need=""
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need="$need chromium"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need="$need postgresql"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "peers: not root or no apt-get; tests needing:$need will skip"
    exit 0
fi
echo "peers: installing$need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null 2>&1 || echo "peers: apt-get update failed"
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $need >/dev/null 2>&1 \
    || echo "peers: could not install$need; the tests needing them will skip"
exit 0
