#!/usr/bin/env python3
"""Submit→placement through a follower: two `shepherd up` servers on one
PostgreSQL, tasks submitted one at a time to the follower; the time from a
task's creation to its placement by the leader (`scheduled_at -
created_at`). Run for each binary given, in the same run (a baseline
first).

    python3 bench/wake.py --postgres URL --tasks 200 BASELINE_BIN NEW_BIN
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime

TOKEN = "bench-admin-token-wake"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(base, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if body is not None else "GET")
    req.add_header("authorization", "Bearer " + TOKEN)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def millis(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def measure(binary, url, tasks, pace):
    work = tempfile.mkdtemp()
    servers = []
    try:
        for i in range(2):
            port = free_port()
            log = open(os.path.join(work, f"s{i}.log"), "w")
            env = dict(os.environ, SHEPHERD_ADMIN_TOKEN=TOKEN, SHEPHERD_LOG="warn", SHEPHERD_CONFIG=os.path.join(work, f"s{i}.toml"))
            proc = subprocess.Popen([binary, "up", "--driver", "process", "--listen", f"127.0.0.1:{port}", "--store", url,
                                     "--leader-lease", "2s", "--data-dir", os.path.join(work, f"s{i}")],
                                    stdout=subprocess.DEVNULL, stderr=log, env=env)
            servers.append((proc, f"http://127.0.0.1:{port}"))
        leader = None
        for _ in range(300):
            for i, (_, base) in enumerate(servers):
                try:
                    if call(base, "/v1/health")["server"]["role"] == "leader":
                        leader = i
                except Exception:
                    pass
            if leader is not None:
                break
            time.sleep(0.1)
        follower = servers[1 - leader][1]
        ids = []
        for _ in range(tasks):
            ids.append(call(follower, "/v1/tasks", {"image": "busybox", "command": ["true"]})["id"])
            time.sleep(pace)
        waits = []
        deadline = time.time() + 60
        for task_id in ids:
            while True:
                task = call(follower, f"/v1/tasks/{task_id}")
                if task.get("scheduled_at") or time.time() > deadline:
                    break
                time.sleep(0.05)
            if task.get("scheduled_at"):
                waits.append(millis(task["scheduled_at"]) - millis(task["created_at"]))
        waits.sort()
        return {"tasks": len(waits), "p50_ms": statistics.median(waits),
                "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))], "max_ms": waits[-1]}
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server's URL (databases are made on it)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between submissions")
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()
    base = args.postgres.rsplit("/", 1)[0]
    results = []
    for n, binary in enumerate(args.binaries):
        db = f"wake_{os.getpid()}_{n}"
        subprocess.run(["psql", args.postgres, "-qc", f"CREATE DATABASE {db}"], check=True)
        result = measure(binary, f"{base}/{db}", args.tasks, args.pace)
        result["binary"] = binary
        results.append(result)
        print(f"{binary}: created→placed through a follower, {result['tasks']} tasks: "
              f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
