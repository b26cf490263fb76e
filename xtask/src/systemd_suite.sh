#!/bin/sh
# portwatch under systemd as PID 1: run once per boot by
# portwatch-vmtest.service (xtask/src/vm_systemd.rs), output on the serial
# console. One `SDTEST ok NAME` or `SDTEST FAIL NAME WHY` line per test;
# xtask checks that every test it knows said ok. A test is a function that
# prints why it failed and returns non-zero.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER= SYSTEMD_COLORS=0
say() { echo "SDTEST $*"; }
# From inside a test, whose output is captured.
info() { echo "SDTEST info $*" >/dev/ttyS0; }
run_test() {
    name=$1
    started=$(date +%s)
    if out=$("$name" 2>&1); then
        say ok "$name" "($(($(date +%s) - started)) s)"
    else
        say FAIL "$name" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-600)"
    fi
}
# wait_for SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
    n=$(($1 * 5)); shift
    while [ $n -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2; n=$((n - 1))
    done
    return 1
}
prop() { systemctl show -p "$2" --value "$1"; }
# What portwatch's processes logged since the unit's last start, as text.
unit_log() {
    journalctl -q -o cat _SYSTEMD_INVOCATION_ID="$(prop portwatch InvocationID)"
}
# bind_fails PORT: a process of this unit fails to bind PORT and waits so
# its /proc entry can still be read.
bind_fails() {
    python3 -c "
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('0.0.0.0', $1))
except OSError as e:
    print(e)
    time.sleep(2)
    sys.exit(0)
sys.exit('bind succeeded')
"
}
exited_with() { [ "$(systemctl is-active portwatch)" != active ] && [ "$(prop portwatch ExecMainStatus)" = "$1" ]; }
ready() { unit_log | grep -q "portwatch: ready"; }
# diagnosed PORT ACTION...: runs ACTION until portwatch logs an event for
# PORT whose holder lookup finished, and prints that event's JSON. At most
# three tries: under qemu without KVM on a loaded host a lookup can take
# longer than --lookup-timeout (seen once), and the event says so.
diagnosed() {
    d_port=$1; shift
    for d_try in 1 2 3; do
        d_n=$(entries PORTWATCH_PORT="$d_port" | wc -l)
        "$@" >/dev/null 2>&1
        wait_for 30 more_entries "$d_port" "$d_n" \
            || { echo "no new entry for port $d_port: $(unit_log | tail -5)" >&2; return 1; }
        sleep 1
        d_e=$(entries PORTWATCH_PORT="$d_port" | tail -1)
        if printf '%s\n' "$d_e" | field PORTWATCH_DIAGNOSIS | grep -q 'took longer than'; then
            info "port $d_port: the holder lookup timed out (try $d_try)"
            continue
        fi
        printf '%s\n' "$d_e"
        return 0
    done
    echo "port $d_port: every lookup timed out" >&2
    return 1
}
more_entries() { [ "$(entries PORTWATCH_PORT="$1" | wc -l)" -gt "$2" ]; }
# entries FILTER...: the unit's journal entries matching, as JSON lines.
entries() { journalctl -q -u portwatch -o json --all "$@"; }
# field NAME: that field of each JSON line on stdin.
field() { python3 -c "
import json, sys
for line in sys.stdin:
    print(json.loads(line).get('$1'))
"; }

say begin
say info "kernel $(uname -r), systemd $(systemctl --version | head -1 | cut -d' ' -f2), $(systemctl is-system-running)"

deb_installs() {
    dpkg -i /vmtest/portwatch.deb || return 1
    [ -x /usr/sbin/portwatch ] && systemctl cat portwatch.service >/dev/null \
        || { echo "no binary or unit after dpkg -i"; return 1; }
    [ "$(systemctl is-enabled portwatch)" = disabled ] \
        || { echo "the package enabled the unit: $(systemctl is-enabled portwatch)"; return 1; }
    [ "$(systemctl is-active portwatch)" = inactive ] \
        || { echo "the package started the unit: $(systemctl is-active portwatch)"; return 1; }
}

service_holder_named_as_its_unit() {
    wait_for 30 systemctl is-active nginx || { echo "nginx.service not active"; return 1; }
    out=$(portwatch who 80)
    echo "$out" | grep -q 'nginx.service' || { echo "no unit: $out"; return 1; }
    echo "$out" | grep -q 'fix: .*`systemctl stop nginx.service`' || { echo "no stop fix: $out"; return 1; }
}

socket_unit_named_not_init_scope() {
    cat >/etc/systemd/system/demo.socket <<'EOF'
[Socket]
ListenStream=0.0.0.0:8080
EOF
    cat >/etc/systemd/system/demo.service <<'EOF'
[Service]
ExecStart=/usr/bin/python3 -c "import socket, time; s = socket.socket(fileno=3); time.sleep(1e6)"
EOF
    systemctl daemon-reload && systemctl start demo.socket || return 1
    t0=$(date +%s%N)
    systemctl show -p Id -p Listen -p Triggers '*.socket' >/dev/null
    t1=$(date +%s%N)
    out=$(portwatch who 8080)
    t2=$(date +%s%N)
    info "systemctl show '*.socket': $(( (t1 - t0) / 1000000 )) ms; portwatch who 8080: $(( (t2 - t1) / 1000000 )) ms"
    echo "$out" | while IFS= read -r l; do info "who 8080: $l"; done
    for want in 'systemd (pid 1) for demo.socket (ListenStream=0.0.0.0:8080), which starts demo.service on the first connection' \
        '`systemctl stop demo.socket`' 'systemctl disable demo.socket'; do
        echo "$out" | grep -qF "$want" || { echo "missing [$want]: $out"; return 1; }
    done
    if echo "$out" | grep 'fix:' | grep -q 'init.scope'; then echo "init.scope in a fix: $out"; return 1; fi
}

# check --unit NAME, found where systemd finds it: a socket unit whose
# port another process holds is "taken" (exit 1), as systemd then fails to
# start it; the same unit active is "yours" (exit 0), its holder the unit.
check_unit_files() {
    cat >/etc/systemd/system/pwcheck.socket <<'EOF'
[Socket]
ListenStream=0.0.0.0:8096
EOF
    cat >/etc/systemd/system/pwcheck.service <<'EOF'
[Service]
ExecStart=/usr/bin/python3 -c "import socket, time; s = socket.socket(fileno=3); time.sleep(1e6)"
EOF
    systemctl daemon-reload
}
# json EXPR: EXPR of the first JSON line on stdin, the object named v
# (printf, not echo: dash's echo turns the JSON's \n escapes into newlines).
json() { python3 -c "
import json, sys
v = json.loads(sys.stdin.readline())
print($1)
"; }

check_unit_taken_by_a_process() {
    check_unit_files
    python3 -c "
import socket, time
s = socket.socket(); s.bind(('0.0.0.0', 8096)); s.listen(); time.sleep(60)" &
    holder=$!
    # Listening, seen without a connection (one left unaccepted would be
    # another socket on the port).
    wait_for 10 sh -c "ss -Hltn 'sport = :8096' | grep -q LISTEN" \
        || { kill $holder; echo "the holder never listened"; return 1; }
    out=$(portwatch check --unit pwcheck.socket --json); rc=$?
    info "check --unit pwcheck.socket (taken): $out"
    portwatch check --unit pwcheck.socket | while IFS= read -r l; do info "check: $l"; done
    systemctl start pwcheck.socket 2>/dev/null; started=$?
    kill $holder; wait $holder 2>/dev/null
    systemctl reset-failed pwcheck.socket 2>/dev/null
    [ $rc = 1 ] || { echo "exit $rc, not 1: $out"; return 1; }
    [ "$(printf '%s\n' "$out" | json 'v["verdict"]')" = taken ] || { echo "not taken: $out"; return 1; }
    [ "$(printf '%s\n' "$out" | json 'v["holders"][0]["pid"]')" = "$holder" ] || { echo "not the holder $holder: $out"; return 1; }
    [ "$(printf '%s\n' "$out" | json 'v["from"][0]')" = "/etc/systemd/system/pwcheck.socket:2 ListenStream=0.0.0.0:8096" ] \
        || { echo "origin: $out"; return 1; }
    # systemd agrees: the socket unit could not bind.
    [ $started != 0 ] || { echo "systemd started pwcheck.socket beside the holder"; return 1; }
}

check_unit_active_is_yours() {
    check_unit_files
    systemctl start pwcheck.socket || { echo "pwcheck.socket did not start: $(systemctl status pwcheck.socket | tail -3)"; return 1; }
    out=$(portwatch check --unit pwcheck.socket --json); rc=$?
    info "check --unit pwcheck.socket (active): $out"
    portwatch check --unit pwcheck.socket | while IFS= read -r l; do info "check: $l"; done
    # Another plan wanting its port (a plain binding) is taken by the unit.
    other=$(portwatch check 8096 --json); orc=$?
    systemctl stop pwcheck.socket
    rm -f /etc/systemd/system/pwcheck.socket /etc/systemd/system/pwcheck.service
    systemctl daemon-reload
    [ $rc = 0 ] || { echo "exit $rc, not 0: $out"; return 1; }
    [ "$(printf '%s\n' "$out" | json 'v["verdict"]')" = yours ] || { echo "not yours: $out"; return 1; }
    [ "$(printf '%s\n' "$out" | json 'v["holders"][0]["socket_unit"]["unit"]')" = pwcheck.socket ] \
        || { echo "holder not named as the socket unit: $out"; return 1; }
    printf '%s\n' "$out" | json 'v["diagnosis"]' | grep -q "held by systemd (pid 1 (systemd, init.scope)) for this deploy's own socket unit pwcheck.socket (ListenStream=0.0.0.0:8096)" \
        || { echo "diagnosis: $out"; return 1; }
    [ $orc = 1 ] && [ "$(printf '%s\n' "$other" | json 'v["verdict"]')" = taken ] \
        || { echo "a plain 8096 beside the active unit: exit $orc $other"; return 1; }
}

start_unit() {
    systemctl reset-failed portwatch 2>/dev/null
    systemctl daemon-reload
    systemctl enable --now portwatch || return 1
    wait_for 60 ready \
        || { echo "not ready: $(systemctl status portwatch | tail -5)"; return 1; }
}

# attaches_all BACKEND: started with BACKEND, no warning since the start.
attaches_all() {
    log=$(unit_log)
    echo "$log" | grep -q "backend $1" || { echo "not backend $1: $log"; return 1; }
    echo "$log" | while IFS= read -r l; do info "$1 start: $l"; done
    if echo "$log" | grep -q 'TIME(UTC)'; then echo "a text header in the journal: $log"; return 1; fi
    if echo "$log" | grep -iE 'not recorded|not permitted|cannot|warning'; then
        echo "warned: $log"; return 1
    fi
    [ "$(systemctl is-active portwatch)" = active ] || { echo "not active"; return 1; }
}

unit_fexit_attaches_all() {
    start_unit || return 1
    attaches_all fexit
}

metrics_answer_on_loopback() {
    body=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9891/metrics', timeout=10).read().decode())") \
        || { echo "no answer on 127.0.0.1:9891"; return 1; }
    echo "$body" | grep -q '^portwatch_' || { echo "no portwatch metrics: $body"; return 1; }
    listen=$(ss -Hltn 'sport = :9891' | awk '{print $4}')
    [ "$listen" = "127.0.0.1:9891" ] || { echo "listening on [$listen]"; return 1; }
}

journal_state_dir_0600() {
    [ "$(stat -c %a /var/lib/portwatch)" = 700 ] || { echo "dir mode $(stat -c %a /var/lib/portwatch)"; return 1; }
    files=$(find /var/lib/portwatch -type f)
    [ -n "$files" ] || { echo "no journal file"; return 1; }
    for f in $files; do
        [ "$(stat -c %a "$f")" = 600 ] || { echo "$f mode $(stat -c %a "$f")"; return 1; }
    done
}

journald_structured_event() {
    diagnosed 80 bind_fails 80 >/dev/null || return 1
    e=$(diagnosed 8080 bind_fails 8080) || return 1
    info "journalctl -u portwatch PORTWATCH_PORT=8080 -o json: $(printf "%s\n" "$e" | cut -c1-1500)"
    for kv in PORTWATCH_HOLDER_UNIT=demo.socket PORTWATCH_HOLDER_PID=1 PORTWATCH_REASON=listener \
        PORTWATCH_PROTO=tcp PORTWATCH_COMM=python3 SYSLOG_IDENTIFIER=portwatch; do
        got=$(printf "%s\n" "$e" | field "${kv%%=*}")
        [ "$got" = "${kv#*=}" ] || { echo "${kv%%=*} is [$got], want [${kv#*=}]"; return 1; }
    done
    printf "%s\n" "$e" | field PORTWATCH_FIX | grep -qF '`systemctl stop demo.socket`' || { echo "fix: $e"; return 1; }
    printf "%s\n" "$e" | field MESSAGE | grep -q EADDRINUSE || { echo "message: $e"; return 1; }
    printf "%s\n" "$e" | field PORTWATCH_PID | grep -qE '^[0-9]+$' || { echo "no failing pid: $e"; return 1; }
    n=$(entries PORTWATCH_PORT=80 PORTWATCH_HOLDER_UNIT=nginx.service | field PORTWATCH_FIX | grep -cF '`systemctl stop nginx.service`')
    [ "$n" -ge 1 ] || { echo "no nginx.service entry with its stop: $(entries PORTWATCH_PORT=80)"; return 1; }
}

same_service_restart() {
    cat >/run/flaky.py <<'EOF'
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", 8081))
except OSError as e:
    print(e, flush=True)
    time.sleep(3)
    sys.exit(1)
s.listen()
# A worker that keeps the listening socket, as pre-forking servers do.
if os.fork() == 0:
    time.sleep(1e6)
time.sleep(1e6)
EOF
    # KillMode=process: a restart stops the main process only, and the
    # worker still holds the port when the new main process binds it.
    cat >/etc/systemd/system/flaky.service <<'EOF'
[Service]
KillMode=process
ExecStart=/usr/bin/python3 /run/flaky.py
EOF
    systemctl daemon-reload && systemctl start flaky.service && sleep 1 || return 1
    e=$(diagnosed 8081 systemctl restart flaky.service) || return 1
    printf "%s\n" "$e" | field MESSAGE | while IFS= read -r l; do info "flaky: $l"; done
    for p in $(ss -Hltnp 'sport = :8081' | grep -o 'pid=[0-9]*' | cut -d= -f2); do
        info "flaky: holder pid $p cgroup $(cat /proc/$p/cgroup | tr '\n' ' ')"
    done
    portwatch who 8081 | grep -E 'python3|fix:' | while IFS= read -r l; do info "flaky who: $l"; done
    printf "%s\n" "$e" | field PORTWATCH_DIAGNOSIS | grep -q 'an older process of the same service' \
        || { echo "diagnosis: $e"; return 1; }
    fix=$(printf "%s\n" "$e" | field PORTWATCH_FIX)
    for want in flaky.service KillMode= '`systemctl stop flaky.service`'; do
        echo "$fix" | grep -qF "$want" || { echo "fix lacks [$want]: $fix"; return 1; }
    done
    [ "$(printf "%s\n" "$e" | field PORTWATCH_HOLDER_UNIT)" = flaky.service ] || { echo "holder unit: $e"; return 1; }
    systemctl stop flaky.service
}

report_reads_journalctl_json() {
    journalctl -u portwatch -o json --all >/tmp/journal.json
    out=$(portwatch report /tmp/journal.json) || { echo "report failed: $out"; return 1; }
    for port in 80 8080 8081; do
        echo "$out" | grep -qw "$port" || { echo "no port $port in: $out"; return 1; }
    done
    # The same report from the unit's own --record journal.
    own=$(portwatch report /var/lib/portwatch) || return 1
    echo "$out" | head -30 | while IFS= read -r l; do info "report: $l"; done
    echo "$own" | grep -q 8081 || { echo "--record journal lacks 8081: $own"; return 1; }
}

sigkill_restarts_with_journal_intact() {
    pid=$(prop portwatch MainPID)
    before=$(cat /var/lib/portwatch/* | wc -c)
    [ "$before" -gt 0 ] || { echo "empty journal"; return 1; }
    kill -9 "$pid"
    wait_for 30 sh -c "[ \"\$(systemctl show -p MainPID --value portwatch)\" != $pid ] && [ \"\$(systemctl show -p MainPID --value portwatch)\" != 0 ]" \
        || { echo "not restarted: $(systemctl status portwatch | tail -5)"; return 1; }
    [ "$(prop portwatch NRestarts)" = 1 ] || { echo "NRestarts $(prop portwatch NRestarts)"; return 1; }
    wait_for 60 ready || { echo "not ready again"; return 1; }
    after=$(cat /var/lib/portwatch/* | wc -c)
    [ "$after" -ge "$before" ] || { echo "journal shrank: $before -> $after bytes"; return 1; }
    portwatch report /var/lib/portwatch | grep -q 8081 || { echo "old events lost"; return 1; }
}

# tracing programs and links: portwatch's kinds (systemd's own are cgroup ones).
bpf_count() { bpftool "$1" show 2>/dev/null | grep -cE "^[0-9]+: (tracepoint|tracing|kprobe|raw_tracepoint|perf_event)"; }

stop_leaves_no_bpf() {
    progs=$(bpf_count prog)
    [ "$progs" -gt 0 ] || { echo "no program attached while running: $(bpftool prog show)"; return 1; }
    systemctl stop portwatch || return 1
    sleep 1
    [ "$(bpf_count prog)" = 0 ] || { echo "left: $(bpftool prog show)"; return 1; }
    [ "$(bpf_count link)" = 0 ] || { echo "links left: $(bpftool link show)"; return 1; }
    info "running: $progs tracing programs; after stop: 0 programs, 0 links"
}

dropin() {
    mkdir -p /etc/systemd/system/portwatch.service.d
    printf '[Service]\n%s\n' "$1" >/etc/systemd/system/portwatch.service.d/test.conf
    systemctl daemon-reload
}

unit_tracepoint_attaches_all() {
    dropin 'ExecStart=
ExecStart=/usr/sbin/portwatch watch --backend tracepoint --record /var/lib/portwatch --metrics 127.0.0.1:9891'
    start_unit || return 1
    attaches_all tracepoint || return 1
    e=$(diagnosed 8080 bind_fails 8080) || return 1
    [ "$(printf '%s\n' "$e" | field PORTWATCH_HOLDER_UNIT)" = demo.socket ] \
        && printf '%s\n' "$e" | field PORTWATCH_JSON | grep -q '"source":"tracepoint"' \
        || { echo "with tracepoint: $e"; return 1; }
    # The unit as shipped before: ~@debug denies perf_event_open. The same
    # check must see it fail, and exit 3 must not be restarted.
    dropin 'ExecStart=
ExecStart=/usr/sbin/portwatch watch --backend tracepoint
SystemCallFilter=~@debug'
    systemctl restart portwatch
    wait_for 120 exited_with 3 || { echo "with ~@debug it did not exit 3: $(prop portwatch ExecMainStatus), $(unit_log | tail -3)"; return 1; }
    # RestartSec=5s: a restart would have happened by now.
    sleep 8
    [ "$(prop portwatch ExecMainStatus)" = 3 ] && [ "$(prop portwatch NRestarts)" = 0 ] \
        && [ "$(systemctl is-active portwatch)" != active ] \
        || { echo "with ~@debug: status $(prop portwatch ExecMainStatus), NRestarts $(prop portwatch NRestarts), $(systemctl is-active portwatch): $(unit_log | tail -3)"; return 1; }
    info "with ~@debug: $(unit_log | grep -m1 -i 'not permitted')"
}

bad_command_line_not_restarted() {
    dropin 'ExecStart=
ExecStart=/usr/sbin/portwatch watch --no-such-option'
    systemctl reset-failed portwatch
    systemctl start portwatch
    wait_for 60 exited_with 2 || { echo "did not exit 2: $(prop portwatch ExecMainStatus)"; return 1; }
    sleep 8
    [ "$(prop portwatch ExecMainStatus)" = 2 ] || { echo "status $(prop portwatch ExecMainStatus)"; return 1; }
    [ "$(prop portwatch NRestarts)" = 0 ] || { echo "restarted $(prop portwatch NRestarts) times"; return 1; }
    [ "$(systemctl is-active portwatch)" = failed ] || { echo "$(systemctl is-active portwatch)"; return 1; }
    rm -r /etc/systemd/system/portwatch.service.d
    systemctl daemon-reload
}

security_exposure() {
    systemctl reset-failed portwatch
    start_unit || return 1
    out=$(systemd-analyze security --no-pager portwatch)
    level=$(echo "$out" | sed -n 's/.*Overall exposure level for portwatch.service: \([0-9.]*\).*/\1/p')
    info "systemd-analyze security portwatch (running): $level"
    [ -n "$level" ] || { echo "no level: $out"; return 1; }
    python3 -c "import sys; sys.exit(0 if float('$level') <= 4.0 else 1)" || { echo "exposure $level above 4.0"; return 1; }
    systemctl stop portwatch
}

# run_child_in_scope HOW: `portwatch run` of a command that prints its own
# cgroup and `systemctl status` of the unit it is in, then fails to bind a
# port a python listener holds. Prints portwatch's stderr; the command's
# report is in /tmp/run-child.
run_child() {
    python3 -c "import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8095)); s.listen(); time.sleep(60)" &
    holder=$!
    wait_for 10 sh -c "ss -Hltn 'sport = :8095' | grep -q 8095" || { echo "no holder on 8095"; return 1; }
    "$@" /usr/sbin/portwatch run -- sh -c '
cg=$(sed -n "s/^0:://p" /proc/self/cgroup)
{ echo "cgroup $cg"; systemctl status --no-pager "${cg##*/}" 2>&1 | head -8
  systemctl show -p Transient -p ActiveState "${cg##*/}"; } >/tmp/run-child
exec python3 -c "import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((\"0.0.0.0\", 8095))
except OSError as e:
    print(e); time.sleep(1); raise SystemExit(7)"' 2>/tmp/run-stderr
    echo "exit $?" >>/tmp/run-child
    kill "$holder"
}

# Under systemd as PID 1, from a unit that was not delegated: CMD runs in a
# transient scope systemd made, and its failed bind is still caught.
run_child_in_transient_scope() {
    run_child || return 1
    err=$(cat /tmp/run-stderr); child=$(cat /tmp/run-child)
    echo "$err" | while IFS= read -r l; do info "run: $l"; done
    echo "$child" | while IFS= read -r l; do info "run child: $l"; done
    echo "$child" | grep -qx 'exit 7' || { echo "not CMD's status 7: $child $err"; return 1; }
    echo "$child" | grep -qE '^cgroup /system.slice/portwatch-run-[0-9]+\.scope$' || { echo "not in a scope: $child"; return 1; }
    echo "$child" | grep -q 'portwatch run: sh -c' || { echo "status without the description: $child"; return 1; }
    echo "$child" | grep -q 'Loaded: loaded (/run/systemd/transient/portwatch-run-[0-9]*\.scope; transient)' \
        && echo "$child" | grep -qx 'Transient=yes' || { echo "not a transient unit: $child"; return 1; }
    echo "$child" | grep -q 'Active: active (running)' && echo "$child" | grep -qx 'ActiveState=active' \
        || { echo "scope not running: $child"; return 1; }
    echo "$err" | grep -qE 'portwatch: CMD runs in the transient unit portwatch-run-[0-9]+\.scope \(systemd is PID 1' \
        || { echo "no scope line: $err"; return 1; }
    echo "$err" | grep -q 'EADDRINUSE' && echo "$err" | grep -q ':8095' && echo "$err" | grep -q 'python3' \
        || { echo "the failed bind was not caught: $err"; return 1; }
    unit=$(echo "$child" | sed -n 's|^cgroup /system.slice/||p')
    # Empty, so systemd stopped and collected it.
    wait_for 10 sh -c "! systemctl is-active --quiet $unit" || { echo "$unit still active"; return 1; }
}

# From a unit with Delegate=yes, portwatch makes CMD's cgroup under its own.
run_child_in_delegated_cgroup() {
    run_child systemd-run --quiet --pipe --wait --collect -p Delegate=yes --unit=pw-delegated -- || return 1
    err=$(cat /tmp/run-stderr); child=$(cat /tmp/run-child)
    echo "$err" | while IFS= read -r l; do info "run delegated: $l"; done
    echo "$child" | grep -qE '^cgroup /system.slice/pw-delegated.service/portwatch-run-[0-9]+$' || { echo "not under the delegated unit: $child"; return 1; }
    echo "$err" | grep -q "made under portwatch's own, which systemd delegated" || { echo "no delegated line: $err"; return 1; }
    echo "$err" | grep -q 'EADDRINUSE' && echo "$err" | grep -q ':8095' || { echo "the failed bind was not caught: $err"; return 1; }
}

for t in deb_installs service_holder_named_as_its_unit socket_unit_named_not_init_scope \
    check_unit_taken_by_a_process check_unit_active_is_yours \
    unit_fexit_attaches_all metrics_answer_on_loopback journal_state_dir_0600 \
    journald_structured_event same_service_restart report_reads_journalctl_json \
    sigkill_restarts_with_journal_intact stop_leaves_no_bpf unit_tracepoint_attaches_all \
    bad_command_line_not_restarted security_exposure run_child_in_transient_scope \
    run_child_in_delegated_cgroup; do
    run_test "$t"
done
say done
systemctl poweroff --no-block
