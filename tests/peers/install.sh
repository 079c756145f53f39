#!/bin/sh
# Installs the protocol peers the tests drive (Debian packages), where this machine allows it.
# Tests whose peer is still missing afterwards skip and say why.
set -u
need=""
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need="$need chromium"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need="$need postgresql"
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need="$need dovecot-imapd"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "peers: not root or no apt-get; tests needing:$need will skip"
    exit 0
fi
echo "peers: installing$need"
export DEBIAN_FRONTEND=noninteractive
# The tests start private instances on free ports; a system-wide Dovecot must not start and hold port 143.
# policy-rc.d exit 101 tells invoke-rc.d not to start services during the install.
own_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
fi
apt-get update -q >/dev/null 2>&1 || echo "peers: apt-get update failed"
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $need >/dev/null 2>&1 \
    || echo "peers: could not install$need; the tests needing them will skip"
[ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
case "$need" in *dovecot*)
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1
    elif [ -s /run/dovecot/master.pid ]; then
        kill "$(cat /run/dovecot/master.pid)" 2>/dev/null
    fi
    ;;
esac
exit 0
