#!/bin/sh
# Create the nodeward system user before files owned by its group land.
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
    echo 'u nodeward - "nodeward workload identity agent" /var/lib/nodeward /usr/sbin/nologin' | systemd-sysusers - || true
elif ! getent passwd nodeward >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/nodeward --no-create-home --shell /usr/sbin/nologin nodeward || true
fi
exit 0
