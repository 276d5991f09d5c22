#!/usr/bin/env bash
# Builds Shepherd and the local test image (busybox:latest, no registry
# needed), starts an all-in-one cluster (embedded SQLite in ./.shepherd; the
# docker driver when a Docker Engine answers), runs container tasks on it and
# shows them. The cluster is stopped at the end unless --keep is given.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

started=$SECONDS
phase() { printf '\033[1m==> %s\033[0m  [%dm%02ds]\n' "$*" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }

command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
phase "the local image busybox:latest (Debian's busybox-static, docker import)"
bash scripts/build-test-image.sh
phase "building Shepherd: the quickstart profile (Cargo.toml), about 3-4 minutes the first time on 2 cores"
# The warm-container runner must be static (it runs in images without a
# libc). It builds beside the main build, in a target directory of its own
# (one cargo at a time per directory), and goes next to the binary, where
# `shepherd up` looks for it.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p shepherd-runner \
    --target x86_64-unknown-linux-gnu --target-dir target/runner &
runner_build=$!
cargo build --profile quickstart -p shepherd
wait "$runner_build"
bin=$PWD/target/quickstart/shepherd
runner=$PWD/target/quickstart/shepherd-runner
cp target/runner/x86_64-unknown-linux-gnu/release/shepherd-runner "$runner"
phase "built; starting an all-in-one cluster"
data=${SHEPHERD_DATA_DIR:-$PWD/.shepherd}
listen=${SHEPHERD_LISTEN:-127.0.0.1:7070}
export SHEPHERD_SERVER=http://$listen
# `shepherd up` writes the CLI's config (server, the default project's token,
# the admin token) on first start; keep the quickstart's beside its data.
export SHEPHERD_CONFIG=$data/cli.toml
mkdir -p "$data"

"$bin" up --listen "$listen" --data-dir "$data" --runner "$runner" >"$data/up.log" 2>&1 &
pid=$!
cleanup() { $keep || { kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; }
trap cleanup EXIT
for _ in $(seq 100); do
    "$bin" nodes >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$data/up.log"; exit 1; }
    sleep 0.1
done
sed -n '/API listening/,$p' "$data/up.log" | grep -v ' INFO ' || true

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
step "shepherd run --wait busybox -- sh -c 'echo hello from task \$SHEPHERD_TASK_ID in container \$(hostname)'"
"$bin" run --wait busybox -- sh -c 'echo hello from task $SHEPHERD_TASK_ID in container $(hostname)'

step "shepherd run --wait busybox -- sh -c 'touch /etc/x; ls /sys/class/net'   # read-only root, no network"
"$bin" run --wait busybox -- sh -c 'touch /etc/x; ls /sys/class/net' || echo "(exit code $?)"

step "shepherd run --wait --timeout 1s busybox -- sleep 5   # stopped at its timeout; exits 124"
"$bin" run --wait --timeout 1s busybox -- sleep 5 || echo "(exit code $?)"

step "shepherd run --wait --reuse busybox -- sh -c 'echo \"… sees /tmp: [\$(ls /tmp)]\"; touch /tmp/left-by-\$SHEPHERD_TASK_ID'   # three times: warm, one container, reset between tasks"
for i in 1 2 3; do
    "$bin" run --wait --reuse busybox -- sh -c 'echo "task $SHEPHERD_TASK_ID sees /tmp: [$(ls /tmp)]"; touch /tmp/left-by-$SHEPHERD_TASK_ID'
done
last=$("$bin" ps -n 1 --json | grep -o '"id": *"[0-9A-Z]*"' | head -1 | grep -o '[0-9A-Z]\{26\}')
step "shepherd inspect $last | tail -2   # ran warm, in the same container as the task before"
"$bin" inspect "$last" | tail -2

step "shepherd code push greet busybox -e WHO=code -- sh -c 'echo hello from \$WHO'; shepherd run --code greet -e WHO=you --wait   # a versioned template"
"$bin" code push greet busybox --max-concurrency 4 -e WHO=code -- sh -c 'echo hello from $WHO'
"$bin" run --code greet -e WHO=you --wait
step "shepherd schedule create --every 1s --run-times 3 --code greet   # three runs, one per second, each slot exactly once"
schedule=$("$bin" schedule create --every 1s --run-times 3 --code greet)
for _ in $(seq 100); do
    "$bin" schedule inspect "$schedule" --json | grep -q '"state": "done"' && break
    sleep 0.1
done
"$bin" schedule ls
"$bin" ps -l "shepherd.schedule=$schedule"

token=$(sed -n 's/^token = "\(.*\)"$/\1/p' "$SHEPHERD_CONFIG")
admin_token=$(sed -n 's/^admin_token = "\(.*\)"$/\1/p' "$SHEPHERD_CONFIG")
step "curl -X POST $SHEPHERD_SERVER/v1/tasks/batch -H 'authorization: Bearer …'   # 200 tasks in one durable transaction"
tasks=$(for i in $(seq 200); do printf '{"image":"busybox","command":["sh","-c","echo task %d; exit $((%d %% 10 == 0))"],"labels":{"demo":"batch"}},' "$i" "$i"; done)
curl -sf -X POST "$SHEPHERD_SERVER/v1/tasks/batch" -H "authorization: Bearer $token" -H 'content-type: application/json' -d "{\"tasks\":[${tasks%,}]}" | head -c 120; echo ...
for _ in $(seq 300); do
    left=$("$bin" ps --json -l demo=batch -n 1000 --state queued,scheduled,running | grep -c '"id"' || true)
    [ "$left" = 0 ] && break
    sleep 0.2
done

step "shepherd ps -l demo=batch -n 5"
"$bin" ps -l demo=batch -n 5
step "shepherd ps -l demo=batch --state failed -n 3"
"$bin" ps -l demo=batch --state failed -n 3
step "shepherd nodes"
"$bin" nodes
step "curl $SHEPHERD_SERVER/v1/health"
curl -s "$SHEPHERD_SERVER/v1/health" -H "authorization: Bearer $token"; echo

step "shepherd project create acme --max-running 2 --rate-limit 100   # a tenant with quotas"
if ! "$bin" project ls | awk '$1 == "acme" { found = 1 } END { exit !found }'; then
    "$bin" project create acme --max-running 2 --rate-limit 100 | sed -n 1p
fi
acme=$("$bin" token create acme --name quickstart | tail -1)
step "echo -n hunter2 | SHEPHERD_TOKEN=\$acme shepherd secret set db"
echo -n hunter2 | SHEPHERD_TOKEN=$acme "$bin" secret set db
step "SHEPHERD_TOKEN=\$acme shepherd run --wait --secret db:DB_PASSWORD busybox -- sh -c 'ls /run/secrets; echo \${#DB_PASSWORD} characters'"
SHEPHERD_TOKEN=$acme "$bin" run --wait --secret db:DB_PASSWORD busybox -- sh -c 'ls /run/secrets; echo ${#DB_PASSWORD} characters'
step "SHEPHERD_TOKEN=\$acme shepherd ps -n 3   # acme sees only its own tasks"
SHEPHERD_TOKEN=$acme "$bin" ps -n 3
step "shepherd audit --limit 6"
"$bin" audit --limit 6
step "shepherd usage   # what each project's tasks used (CPU, memory, run time), per hour"
"$bin" usage
step "timeout 2 shepherd events --after 0-0-0 --types node,project   # the event stream, from the start"
timeout 2 "$bin" events --after 0-0-0 --types node,project || true
step "curl $SHEPHERD_SERVER/metrics | grep shepherd_tasks_finished_total"
curl -s "$SHEPHERD_SERVER/metrics" -H "authorization: Bearer $admin_token" | grep '^shepherd_tasks_finished_total' || true
echo
echo "The dashboard: $SHEPHERD_SERVER/ui (log in with the admin token, or a project's)."

phase "done"
if $keep; then
    echo
    echo "The cluster keeps running (pid $pid, log $data/up.log). Try:"
    echo "  export SHEPHERD_CONFIG=$SHEPHERD_CONFIG   # server and tokens"
    echo "  $bin run --wait busybox -- uname -a"
    echo "Stop it with: kill -INT $pid"
else
    echo
    echo "Stopping the cluster (run with --keep to leave it up)."
fi
