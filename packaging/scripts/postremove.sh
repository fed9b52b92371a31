#!/bin/sh
# Reload systemd after the unit files are gone. State (/var/lib/nodeward,
# the CA) is kept unless the package is purged.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = "purge" ]; then
    rm -rf /var/lib/nodeward
fi
exit 0
