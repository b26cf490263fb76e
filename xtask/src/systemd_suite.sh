#!/bin/sh
# Stub while the infrastructure is checked.
say() { echo "SDTEST $*"; }
say begin
say info "$(uname -r) $(systemctl is-system-running)"
if dpkg -i /vmtest/portwatch.deb >/tmp/dpkg.log 2>&1; then say ok deb_installs; else say FAIL deb_installs "$(tail -3 /tmp/dpkg.log)"; fi
say info "$(systemctl list-sockets --all --full --no-legend --show-types 2>&1 | head -5)"
say done
systemctl poweroff --no-block
