#!/usr/bin/env bash
# Rolling update of a Brio mesh, one node at a time, in the order of the deployment guide
# ("Rolling Updates"): workers first, then standby coordinators, the primary coordinator last.
#
# For each node:
#   1. drain it: `brio mesh drain NODE`, run beside the node (it drains itself); the primary
#      places no new task on it once its heartbeats say so, and what runs there finishes;
#   2. wait until the primary sees it draining and its active agents are 0;
#   3. stop it, run the update step (if any), start it;
#   4. wait until it answers again, not draining, and the primary (or, for the old primary,
#      a new one) sees it healthy.
# A node that does not drain, stop or come back in time stops the script (exit 1) before it
# touches the next node.
#
# Usage: rolling-update.sh [options] NODE...
#   NODE...               the node ids to update, in any order (every node of the mesh that
#                         should be updated); the script learns each one's role, and which
#                         coordinator is primary, from `brio mesh status --json`
# Options (each also an environment variable):
#   --mesh CMD            ROLLING_MESH: how to run `brio mesh` beside a node, {node} replaced by
#                         the node id (default: "ssh {node} brio mesh")
#   --stop CMD            ROLLING_STOP: stop a node (default: "ssh {node} sudo systemctl stop UNIT")
#   --update CMD          ROLLING_UPDATE: what to do while it is stopped, e.g.
#                         "ssh {node} /opt/brio/bin/pip install -U brio" (default: nothing)
#   --start CMD           ROLLING_START: start a node (default: "ssh {node} sudo systemctl start UNIT")
#   --unit NAME           ROLLING_UNIT: the systemd unit of the defaults (default: brio, deploy/systemd/brio.service)
#   --drain-timeout S     ROLLING_DRAIN_TIMEOUT: seconds for a node's agents to finish (default 600)
#   --up-timeout S        ROLLING_UP_TIMEOUT: seconds for a node to come back (default 120)
#   --settle S            ROLLING_SETTLE: seconds to wait after the primary sees a drain, for
#                         assignments already on their way to land (default 2)
#   --dry-run             print the plan (order and commands) and stop
# Commands are run with `sh -c`; {node} is replaced by the node id.
#
# Locally (nodes as processes on this machine, one config file each), for example:
#   ROLLING_MESH='BRIO_CONFIG=/srv/brio/{node}/brio.toml brio mesh' \
#   ROLLING_STOP='kill -TERM "$(cat /srv/brio/{node}/pid)"' \
#   ROLLING_START='/srv/brio/start {node}' \
#   deploy/rolling-update.sh worker-1 worker-2 coordinator-2 coordinator-1
#
# Needs: bash and python3 (to read the JSON of `brio mesh status --json`).

set -euo pipefail

MESH_CMD=${ROLLING_MESH:-"ssh {node} brio mesh"}
UNIT=${ROLLING_UNIT:-brio}
STOP_CMD=${ROLLING_STOP:-}
START_CMD=${ROLLING_START:-}
UPDATE_CMD=${ROLLING_UPDATE:-}
DRAIN_TIMEOUT=${ROLLING_DRAIN_TIMEOUT:-600}
UP_TIMEOUT=${ROLLING_UP_TIMEOUT:-120}
SETTLE=${ROLLING_SETTLE:-2}
DRY_RUN=0
NODES=()

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

while (($#)); do
    case $1 in
        --mesh) MESH_CMD=$2; shift 2 ;;
        --stop) STOP_CMD=$2; shift 2 ;;
        --start) START_CMD=$2; shift 2 ;;
        --update) UPDATE_CMD=$2; shift 2 ;;
        --unit) UNIT=$2; shift 2 ;;
        --drain-timeout) DRAIN_TIMEOUT=$2; shift 2 ;;
        --up-timeout) UP_TIMEOUT=$2; shift 2 ;;
        --settle) SETTLE=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage ;;
        --) shift; NODES+=("$@"); break ;;
        -*) echo "rolling-update: unknown option $1" >&2; usage ;;
        *) NODES+=("$1"); shift ;;
    esac
done
STOP_CMD=${STOP_CMD:-"ssh {node} sudo systemctl stop $UNIT"}
START_CMD=${START_CMD:-"ssh {node} sudo systemctl start $UNIT"}
((${#NODES[@]})) || { echo "rolling-update: name the nodes to update" >&2; usage; }

log() { printf '%s rolling-update: %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The command template with {node} replaced.
expand() { local template=$1 node=$2; printf '%s' "${template//\{node\}/$node}"; }

# Run `brio mesh ARGS...` beside NODE; its stdout is ours, its stderr goes to ours.
mesh_on() {
    local node=$1; shift
    local args="" a
    for a in "$@"; do args+=" $(printf '%q' "$a")"; done
    sh -c "$(expand "$MESH_CMD" "$node")$args"
}

# json EXPRESSION [ARG...] < JSON: print a value of a JSON document: EXPRESSION is Python over
# `d` (the document) and `a` (the ARGs), e.g. 'd["lease"]["primary"]'; booleans print as
# true/false, null as nothing.
json() {
    python3 -c '
import json, sys
d, a = json.load(sys.stdin), sys.argv[2:]
v = eval(sys.argv[1])
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)
' "$@"
}

status_json() { mesh_on "$1" status ${2:+"$2"} --json 2> /dev/null; }

# The node id the cluster names as primary, asked of the coordinators (then the other nodes)
# in turn, and confirmed by the primary itself; fails if none knows.
find_primary() {
    local node out primary
    for node in "${coordinators[@]}" "${NODES[@]}"; do
        out=$(status_json "$node") || continue
        primary=$(json 'd.get("lease", {}).get("primary", "")' <<< "$out") || continue
        [[ -n $primary ]] || continue
        if [[ $primary != "$node" ]]; then
            out=$(status_json "$primary") || continue
        fi
        if [[ $(json 'd.get("lease", {}).get("role", "")' <<< "$out") == primary ]]; then
            printf '%s\n' "$primary"
            return 0
        fi
    done
    return 1
}

role_of() {
    local out
    out=$(status_json "$1") || die "cannot ask $1 for its status (is it running?)"
    json 'd["node"]["role"]' <<< "$out"
}

# wait_until TIMEOUT WHAT COMMAND...: run COMMAND every second until it succeeds.
wait_until() {
    local timeout=$1 what=$2; shift 2
    local deadline=$((SECONDS + ${timeout%.*}))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
    log "$what"
}

# BY's row for NODE: its state and draining flag ("healthy false"); nothing if it has none.
seen_by() {
    local out
    out=$(status_json "$1" "$2") || return 1
    json '" ".join(p["status"] + " " + str(p["draining"]).lower() for p in d["peers"] if p["node_id"] == a[0])' "$2" <<< "$out"
}

# PRIMARY (the global, refreshed when it no longer answers as such) sees NODE draining.
seen_draining() {
    [[ $primary == "$1" ]] && return 0 # the primary drains itself: its own answer says so
    if [[ $(seen_by "$primary" "$1") == *" true" ]]; then return 0; fi
    primary=$(find_primary) || primary=""
    return 1
}

idle() {
    local out active
    out=$(status_json "$1") || return 1
    active=$(json 'd["node"]["workload"]["active"]' <<< "$out") || return 1
    log "$1: $active active agent(s)"
    ((active == 0))
}

# NODE answers, not draining, and a primary (another node, or NODE itself) sees it healthy.
back_up() {
    local node=$1 out
    out=$(status_json "$node") || return 1
    [[ $(json 'd["node"]["draining"]' <<< "$out") == false ]] || return 1
    if [[ -z $primary || $primary == "$node" ]]; then
        primary=$(find_primary) || { primary=""; return 1; }
        [[ $primary == "$node" ]] && return 0
    fi
    if [[ $(seen_by "$primary" "$node") == "healthy false" ]]; then return 0; fi
    primary=$(find_primary) || primary=""
    return 1
}

run() {
    local what=$1 cmd=$2
    log "$what: $cmd"
    sh -c "$cmd" || die "$what failed: $cmd"
}

update_node() {
    local node=$1
    log "updating $node"
    primary=$(find_primary) || die "no primary coordinator found"
    mesh_on "$node" drain "$node" >&2 || die "drain of $node refused"
    wait_until 60 "the primary sees $node draining" seen_draining "$node" \
        || die "$node: the primary does not see it draining after 60 s"
    sleep "$SETTLE"
    wait_until "$DRAIN_TIMEOUT" "$node: no active agents" idle "$node" \
        || die "$node still runs agents after ${DRAIN_TIMEOUT}s"
    run "stop $node" "$(expand "$STOP_CMD" "$node")"
    [[ -z $UPDATE_CMD ]] || run "update $node" "$(expand "$UPDATE_CMD" "$node")"
    run "start $node" "$(expand "$START_CMD" "$node")"
    wait_until "$UP_TIMEOUT" "$node is back: healthy, not draining" back_up "$node" \
        || die "$node did not come back healthy within ${UP_TIMEOUT}s"
    log "$node updated"
}

# --- the order: workers, standby coordinators, the primary last ----------------------------
workers=() coordinators=() primary=""
for node in "${NODES[@]}"; do
    case $(role_of "$node") in
        worker) workers+=("$node") ;;
        coordinator) coordinators+=("$node") ;;
        *) die "$node: unknown role" ;;
    esac
done
primary=$(find_primary) || die "no primary coordinator found: fix the cluster first"
log "workers: ${workers[*]:-none}; coordinators: ${coordinators[*]:-none}; primary: $primary"
if ((DRY_RUN)); then
    for node in "${workers[@]}" "${coordinators[@]}"; do
        [[ $node == "$primary" ]] || log "would update $node"
    done
    printf '%s\n' "${coordinators[@]}" | grep -qx -- "$primary" && log "would update $primary (primary) last"
    log "stop: $STOP_CMD; update: ${UPDATE_CMD:-nothing}; start: $START_CMD"
    exit 0
fi

for node in "${workers[@]}"; do
    update_node "$node"
done
# The primary may move while standbys restart: always leave the current one for last.
remaining=("${coordinators[@]}")
while ((${#remaining[@]})); do
    primary=$(find_primary) || die "no primary coordinator found"
    next=""
    for node in "${remaining[@]}"; do
        if [[ $node != "$primary" ]]; then next=$node; break; fi
    done
    [[ -n $next ]] || next=${remaining[0]} # only the primary is left
    update_node "$next"
    kept=()
    for node in "${remaining[@]}"; do [[ $node == "$next" ]] || kept+=("$node"); done
    remaining=("${kept[@]+"${kept[@]}"}")
done
primary=$(find_primary) || die "no primary coordinator after the update"
log "done: ${#NODES[@]} node(s) updated; primary: $primary"
