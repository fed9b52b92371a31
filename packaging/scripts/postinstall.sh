#!/bin/sh
# Apply sysusers/tmpfiles entries and tell systemd about the units. Nothing
# is enabled or started: set trust_domain and entries first, then
#   systemctl enable --now nodeward-agent.socket
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers nodeward.conf || true
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create nodeward.conf || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade restarts a running agent (the socket keeps clients waiting).
    if systemctl is-active --quiet nodeward-agent.service; then
        systemctl try-restart nodeward-agent.service || true
    fi
fi
exit 0
