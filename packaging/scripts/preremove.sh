#!/bin/sh
# On removal (not upgrade) stop and disable the agent and its socket.
set -e
case "$1" in
    remove|purge|0)
        if [ -d /run/systemd/system ]; then
            systemctl disable --now nodeward-agent.socket nodeward-agent.service >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
