#!/usr/bin/env python3
"""A Shepherd `exec` provisioner that makes "machines" as local agent processes.

Tested by Shepherd's own test suite (crates/cli/tests/autoscale.rs); a
template for real drivers: it speaks the whole protocol of
docs/provisioning.md. One JSON request on stdin, one JSON answer on stdout,
exit 0 on success (non-zero with a message on stderr on failure).

Each machine is a `shepherd agent` started in its own session, with its
state under $SHEPHERD_LOCAL_AGENTS_DIR/<cluster>/<machine id>/ (pid,
machine.json, data/, agent.log).

Environment:
  SHEPHERD_LOCAL_AGENTS_DIR     where state goes (default ./local-agents)
  SHEPHERD_BIN                  the shepherd binary (default: `shepherd` on PATH)
  SHEPHERD_LOCAL_AGENTS_DRIVER  how the agents run tasks (default: process)
  SHEPHERD_LOCAL_AGENTS_ARGS    more agent arguments, space-separated
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time


def state_root(cluster):
    root = os.environ.get("SHEPHERD_LOCAL_AGENTS_DIR", "local-agents")
    return os.path.join(root, cluster)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def read_pid(dir):
    try:
        with open(os.path.join(dir, "pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def create(request):
    machine = request["machine"]
    dir = os.path.join(state_root(request["cluster"]), machine["id"])
    os.makedirs(dir, exist_ok=True)
    # Two creates of one machine (a server that died mid-create and the
    # next one asking again) may run at once: one at a time, so the second
    # sees the first's agent.
    with open(os.path.join(dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return create_locked(request, machine, dir)


def create_locked(request, machine, dir):
    pid = read_pid(dir)
    if pid is not None and alive(pid):
        # Asked again (a server that crashed mid-create): the same machine.
        return {"provider_id": f"pid-{pid}"}
    data = os.path.join(dir, "data")
    os.makedirs(data, exist_ok=True)
    binary = os.environ.get("SHEPHERD_BIN", "shepherd")
    driver = os.environ.get("SHEPHERD_LOCAL_AGENTS_DRIVER", "process")
    args = [binary] + request["agent_args"] + ["--data-dir", os.path.abspath(data), "--driver", driver]
    args += os.environ.get("SHEPHERD_LOCAL_AGENTS_ARGS", "").split()
    env = dict(os.environ, SHEPHERD_JOIN_TOKEN=request["join"]["token"])
    with open(os.path.join(dir, "agent.log"), "ab") as log:
        child = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    with open(os.path.join(dir, "pid"), "w") as f:
        f.write(str(child.pid))
    with open(os.path.join(dir, "machine.json"), "w") as f:
        json.dump({"machine_id": machine["id"], "pool": machine["pool"]}, f)
    return {"provider_id": f"pid-{child.pid}"}


def destroy(request):
    dir = os.path.join(state_root(request["cluster"]), request["machine_id"])
    pid = read_pid(dir)
    if pid is not None and alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + 20
        while alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(dir, ignore_errors=True)
    return {}


def list_machines(request):
    root = state_root(request["cluster"])
    machines = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            dir = os.path.join(root, name)
            pid = read_pid(dir)
            if pid is None:
                continue
            try:
                with open(os.path.join(dir, "machine.json")) as f:
                    pool = json.load(f).get("pool")
            except (OSError, ValueError):
                pool = None
            machines.append({"machine_id": name, "provider_id": f"pid-{pid}", "pool": pool})
    return {"machines": machines}


def main():
    request = json.load(sys.stdin)
    if request.get("version") != 1:
        print(f"protocol version {request.get('version')} is not supported (1 is)", file=sys.stderr)
        return 2
    ops = {"create": create, "destroy": destroy, "list": list_machines}
    op = ops.get(request.get("op"))
    if op is None:
        print(f"unknown op {request.get('op')!r}", file=sys.stderr)
        return 2
    json.dump(op(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
