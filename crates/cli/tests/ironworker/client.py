"""IronWorker's own Python client (iron_worker, pinned in scripts/test.sh)
against a live Shepherd server: every call as a user of IronWorker makes
it, unmodified. Run by crates/cli/tests/ironworker.rs, which starts the
server (docker driver, `--stack sh=busybox`) and passes its address, the
project and a token in the environment. Exits non-zero on the first
failure, saying what failed."""

import json
import os
import sys
import tempfile
import time

from iron_worker import CodePackage, IronWorker, Task

HOST = os.environ["IRON_HOST"]
PORT = int(os.environ["IRON_PORT"])
PROJECT = os.environ["IRON_PROJECT"]
TOKEN = os.environ["IRON_TOKEN"]
# Where a task reaches the server (the project network's gateway; the
# worker finds the gateway's address itself).
PORT_FROM_TASK = os.environ["IRON_PORT"]

WORKER = r"""#!/bin/sh
# An IronWorker shell worker: run as `sh worker.sh -payload FILE -id TASK_ID -d DIR`.
while [ $# -gt 0 ]; do
  case "$1" in
    -payload) PAYLOAD="$2"; shift ;;
    -id) TASK_ID="$2"; shift ;;
    -d) TASK_DIR="$2"; shift ;;
  esac
  shift
done
BODY=$(cat "$PAYLOAD")
echo "task $TASK_ID says: $BODY"
echo "helper: $(cat "$TASK_DIR/lib/helper.txt")"
case "$BODY" in
  *sleep*) exec sleep 60 ;;
  *fail*) echo "failing on purpose" >&2; exit 3 ;;
  *progress*)
    TOKEN=$(echo "$BODY" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
    PORT=$(echo "$BODY" | sed -n 's/.*"port": *"\([^"]*\)".*/\1/p')
    PROJECT=$(echo "$BODY" | sed -n 's/.*"project": *"\([^"]*\)".*/\1/p')
    GATEWAY=$(ip route | awk '/default/ { print $3 }')
    wget -q -O - --header "Authorization: OAuth $TOKEN" --header "Content-Type: application/json" \
      --post-data '{"percent": 60, "msg": "more than half"}' \
      "http://$GATEWAY:$PORT/2/projects/$PROJECT/tasks/$TASK_ID/progress" || exit 7
    echo
    ;;
esac
"""


def check(condition, message):
    if not condition:
        print("FAILED: " + message, file=sys.stderr)
        sys.exit(1)
    print("ok: " + message)


def wait_for(worker, task_id, statuses, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        task = worker.task(task_id)
        if task.status in statuses:
            return task
        time.sleep(0.25)
    check(False, "task %s reached %s within %ss (it is %s)" % (task_id, statuses, limit, worker.task(task_id).status))


worker = IronWorker(host=HOST, port=PORT, protocol="http", project_id=PROJECT, token=TOKEN, api_version=2)

# Upload a zip code: a shell worker on the busybox stack.
with tempfile.TemporaryDirectory() as directory:
    os.chdir(directory)
    os.makedirs("hello/lib")
    with open("hello/worker.sh", "w") as f:
        f.write(WORKER)
    with open("hello/lib/helper.txt", "w") as f:
        f.write("from the package")
    code = CodePackage(name="hello", runtime="sh")
    code.merge("hello", ignoreRootDir=True)
    code.executable = "worker.sh"
    uploaded = worker.upload(code)
    check(uploaded.name == "hello" and uploaded.id, "upload a zip code (%s, revision %s)" % (uploaded.id, uploaded.revision))
codes = worker.codes()
check([c.name for c in codes] == ["hello"], "list codes: %s" % [c.name for c in codes])
check(worker.code(uploaded.id).runtime == "sh", "get a code")
check(len(worker.revisions(uploaded.id)) == 1, "list a code's revisions")

# Queue 50 tasks with payloads, wait for them, read their logs.
tasks = worker.queue(tasks=[Task(code_name="hello", payload={"n": n}) for n in range(50)])
check(len(tasks) == 50, "queue 50 tasks at once")
for n, task in enumerate(tasks):
    done = wait_for(worker, task.id, ["complete", "error", "cancelled", "killed", "timeout"])
    if done.status != "complete":
        check(False, "task %d (%s) ended %s: %s %s" % (n, task.id, done.status, worker.client.get("tasks/%s" % task.id)["body"], worker.log(task.id)))
    log = worker.log(task.id)
    if '"n": %d}' % n not in log or "from the package" not in log:
        check(False, "task %d's log holds its payload and the package's file: %r" % (n, log))
check(True, "all 50 tasks complete, each log with its own payload")
one = worker.task(tasks[7].id)
check(one.payload == {"n": 7} and one.code_name == "hello", "a task shows its payload and code")
check("task %s says" % tasks[7].id in worker.stdout(tasks[7].id), "stdout of a task")

# Cancel one.
sleeper = worker.queue(code_name="hello", payload={"sleep": True}, label="to-cancel")
wait_for(worker, sleeper.id, ["running"])
check(worker.cancel(sleeper.id), "cancel a running task")
check(wait_for(worker, sleeper.id, ["cancelled"]).status == "cancelled", "it ends cancelled")

# A failing task, retried.
failing = worker.queue(code_name="hello", payload={"fail": True}, priority=2, timeout=60)
failed = wait_for(worker, failing.id, ["error"])
check(failed.status == "error", "a failing task ends in error")
check("failing on purpose" in worker.log(failing.id), "its log holds stderr")
retried = worker.retry(failing.id, delay=1)
new_id = retried["tasks"][0]["id"]
check(new_id != failing.id, "retry makes a new task")
check(wait_for(worker, new_id, ["error"]).payload == {"fail": True}, "the retry runs with the same payload")

# Progress from inside a task: the task needs a network to reach the
# server, which IronWorker's upload cannot ask for, so a second revision of
# the code sets it through Shepherd's own API.
import urllib.request
def shepherd(method, path, body=None):
    request = urllib.request.Request("http://%s:%d%s" % (HOST, PORT, path), method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())
revision = shepherd("GET", "/v1/codes/hello")
for field in ("revision", "created_at", "rolled_back_from"):
    revision.pop(field, None)
revision["network"] = "bridge"
check(shepherd("POST", "/v1/codes", revision)["revision"] == 2, "a second revision of the code, with a network")
reporter = worker.queue(code_name="hello", payload={"progress": True, "token": TOKEN, "port": PORT_FROM_TASK, "project": PROJECT})
reported = wait_for(worker, reporter.id, ["complete", "error"])
check(reported.status == "complete", "the reporting task completes: %s" % worker.log(reporter.id))
check(reported.percent == 60, "its progress is shown: %s%%" % reported.percent)
# Its progress is final once it ended: a late report is refused (409).
try:
    worker.setProgress(reporter.id, 100, "done, said from outside")
    check(False, "progress after the end is refused")
except Exception as e:
    check(getattr(getattr(e, "response", None), "status_code", None) == 409, "progress after the end is refused: %s" % e)
check(worker.task(reporter.id).percent == 60, "the progress stays as the task left it")

# A schedule, seen firing.
scheduled = worker.queue(code_name="hello", payload={"from": "schedule"}, run_every=1, run_times=2)
check(scheduled.scheduled, "create a schedule")
deadline = time.time() + 60
while time.time() < deadline and (worker.task(scheduled.id, scheduled=True).run_count or 0) < 2:
    time.sleep(0.25)
schedule = worker.task(scheduled.id, scheduled=True)
check(schedule.run_count == 2, "the schedule fired twice (run_count %s)" % schedule.run_count)
check(any(s.id == scheduled.id for s in worker.tasks(scheduled=True)), "list schedules")
later = worker.queue(code_name="hello", payload={}, run_every=3600)
check(worker.cancel(later.id, scheduled=True), "cancel a schedule")

# List tasks by status.
complete = worker.tasks(complete=1, per_page=100)
check(len(complete) >= 50 and all(t.status == "complete" for t in complete), "list complete tasks (%d)" % len(complete))
errors = worker.tasks(error=1)
check({failing.id, new_id} <= {t.id for t in errors} and all(t.status == "error" for t in errors), "list tasks in error")
cancelled = worker.tasks(cancelled=1)
check([t.id for t in cancelled] == [sleeper.id], "list cancelled tasks")
page2 = worker.tasks(complete=1, per_page=20, page=1)
check(len(page2) == 20 and not ({t.id for t in page2} & {t.id for t in worker.tasks(complete=1, per_page=20)}), "pages do not overlap")
by_code = worker.tasks_by_code_name("hello")
check(len(by_code) == 30, "tasks by code name, a page of 30")

check(worker.deleteCode(uploaded.id), "delete a code")
check(worker.codes() == [], "no code left")
print("all IronWorker client calls succeeded")
