#!/usr/bin/env python3
"""Time to start 200 tasks of a 50 MiB image on three nodes that lack it.

A `shepherd server` and three `shepherd agent --driver docker` processes
(one engine: this machine has one) pull from Debian's docker-registry on
loopback (scripts/registry.sh, htpasswd login). Each run removes the image
from the engine, submits 200 short tasks in one batch, and measures:

- dedup:    as shipped (one pull per image and login per node at a time)
- nodedup:  agents started with --no-pull-dedup (every attempt that misses
            the image pulls it itself)
- prefetch: `shepherd image prefetch` first (timed apart), then the batch

Each mode runs twice: on loopback (the registry answers at memory speed)
and through a link throttled to LINK_MIBPS MiB/s (default 16, as from a
registry across a network). Baseline in the same run: one `docker pull` of
the image straight from the engine, over each link. Counts the registry's
manifest and blob requests of each run (from its access log). Prints a
table and writes JSON (argv[1]).

Usage: bench/pull.sh (builds, then runs this).
"""

import calendar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/shepherd")
REGISTRY = os.path.join(ROOT, "scripts/registry.sh")
ADMIN = "bench-admin-token-0123456789"
JOIN = "bench-join-token"
TASKS = 200
NODES = 3
RUNS = int(os.environ.get("PULL_BENCH_RUNS", "2"))
LINK_MIBPS = float(os.environ.get("LINK_MIBPS", "16"))


class SlowLink:
    """A TCP proxy to 127.0.0.1:`target` passing what comes back at about `mibps` MiB/s."""

    def __init__(self, target, mibps):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.target, self.rate = target, mibps * 1024 * 1024
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self.pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, self.rate), daemon=True).start()

    @staticmethod
    def pipe(src, dst, rate):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def api(url, path, body=None, method=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data else "GET"))
    req.add_header("Authorization", "Bearer " + ADMIN)
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
        return json.loads(text) if text else None


def registry_requests(log, since):
    """Manifest requests (HEAD or GET) and blob GETs served (200) after byte offset `since`."""
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    manifests = sum(1 for l in text.splitlines() if "/manifests/" in l and ('"GET ' in l or '"HEAD ' in l) and '" 200 ' in l)
    blobs = sum(1 for l in text.splitlines() if "/blobs/" in l and '"GET ' in l and '" 200 ' in l)
    return manifests, blobs


class Cluster:
    def __init__(self, work, registry_address, dedup):
        self.work = work
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, SHEPHERD_ADMIN_TOKEN=ADMIN, SHEPHERD_LOG="warn")
        self.procs = []
        data = os.path.join(work, "server")
        self.procs.append(subprocess.Popen(
            [BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--join-token", JOIN],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "a")))
        self.wait_health()
        for i in range(NODES):
            args = [BIN, "agent", "--join", self.url, "--join-token", JOIN, "--data-dir", os.path.join(work, f"agent{i}"),
                    "--driver", "docker", "--max-tasks", "100", "--cpu", "100000", "--memory", "100000", "--stop-tasks",
                    "--image-cleanup-above", "off"]
            if not dedup:
                args.append("--no-pull-dedup")
            self.procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                               stderr=open(os.path.join(work, f"agent{i}.log"), "a")))
        deadline = time.time() + 60
        while True:
            nodes = api(self.url, "/v1/nodes")["nodes"]
            if sum(1 for n in nodes if n["state"] == "ready") == NODES:
                break
            if time.time() > deadline:
                raise SystemExit(f"agents did not join: {nodes}")
            time.sleep(0.2)
        api(self.url, f"/v1/projects/default/registries/{registry_address}",
            {"username": "bench", "password": "bench-pass"}, method="PUT")

    def wait_health(self):
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/v1/health", timeout=2)
                return
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run_batch(cluster, image):
    """Submits TASKS tasks; seconds from submit to the last start and to the last end."""
    task = {"image": image, "command": ["true"], "pull_policy": "if_not_present",
            "resources": {"cpu_millicores": 10, "memory_mib": 16}, "retry": {"max_attempts": 1}}
    t0 = time.time()
    ids = api(cluster.url, "/v1/tasks/batch", {"tasks": [task] * TASKS})["ids"]
    pending = set(ids)
    last_start, first_start, failed, done = 0.0, None, 0, {}
    deadline = time.time() + 900
    while pending:
        for id_ in list(pending)[:50]:
            t = api(cluster.url, f"/v1/tasks/{id_}")
            if t["state"] in ("succeeded", "failed", "timed_out", "cancelled"):
                pending.discard(id_)
                done[id_] = t
        if time.time() > deadline:
            raise SystemExit(f"{len(pending)} tasks never ended")
        if pending:
            time.sleep(0.2)
    total = time.time() - t0
    for t in done.values():
        if t["state"] != "succeeded":
            failed += 1
            continue
        started = t["attempts"][-1]["started_at"]
        # RFC 3339 with milliseconds, UTC.
        frac = started[20:23] if started[19:20] == "." else "0"
        ts = calendar.timegm(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)
        last_start = max(last_start, ts - t0)
        first_start = ts - t0 if first_start is None else min(first_start, ts - t0)
    return first_start or 0.0, last_start, total, failed


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    work = tempfile.mkdtemp(prefix="shepherd-pull-bench-")
    reg_dir = os.path.join(work, "registry")
    address = sh("bash", REGISTRY, "start", reg_dir, "bench", "bench-pass")
    log = os.path.join(reg_dir, "registry.log")
    try:
        # A 50 MiB image: the test image plus 50 MiB of random bytes (no compression shrinks them).
        local = f"shepherd-bench-big:{os.getpid()}"
        name = f"bench/big:{os.getpid()}"
        sh("docker", "rm", "-f", "shepherd-bench-big")
        sh("docker", "run", "--name", "shepherd-bench-big", "busybox:latest", "sh", "-c", "head -c 52428800 /dev/urandom > /blob")
        sh("docker", "commit", "shepherd-bench-big", local)
        sh("docker", "rm", "-f", "shepherd-bench-big")
        direct = sh("bash", REGISTRY, "push", reg_dir, local, name)
        subprocess.run(["docker", "rmi", "-f", local], capture_output=True)
        link = SlowLink(int(address.rsplit(":", 1)[1]), LINK_MIBPS)
        slow_address = f"127.0.0.1:{link.port}"
        cfg = os.path.join(reg_dir, "docker-config")
        subprocess.run(["docker", "--config", cfg, "login", slow_address, "-u", "bench", "--password-stdin"],
                       input="bench-pass", text=True, check=True, capture_output=True)
        results = []
        for run in range(1, RUNS + 1):
          for via, image in (("loopback", direct), (f"{LINK_MIBPS:g} MiB/s", f"{slow_address}/{name}")):
            row = {"run": run, "link": via}
            # Baseline: one pull straight from the engine.
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
            t0 = time.time()
            sh("docker", "--config", cfg, "pull", image)
            row["docker_pull_s"] = round(time.time() - t0, 2)
            for mode in ("dedup", "nodedup", "prefetch"):
                subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
                cwork = os.path.join(work, f"{mode}-{run}-{'lo' if via == 'loopback' else 'slow'}")
                os.makedirs(cwork)
                cluster = Cluster(cwork, image.split("/", 1)[0], dedup=(mode != "nodedup"))
                try:
                    since = os.path.getsize(log)
                    prefetch_s = 0.0
                    if mode == "prefetch":
                        t0 = time.time()
                        env = dict(os.environ, SHEPHERD_SERVER=cluster.url, SHEPHERD_TOKEN=ADMIN)
                        subprocess.run([BIN, "image", "prefetch", image, "--project", "default", "--timeout", "10m"],
                                       env=env, check=True, capture_output=True)
                        prefetch_s = time.time() - t0
                    first_start, last_start, total, failed = run_batch(cluster, image)
                    manifests, blobs = registry_requests(log, since)
                    row[mode] = {"prefetch_s": round(prefetch_s, 2), "first_start_s": round(first_start, 2),
                                 "last_start_s": round(last_start, 2),
                                 "all_done_s": round(total, 2), "failed": failed,
                                 "registry_manifest_gets": manifests, "registry_blob_gets": blobs}
                finally:
                    cluster.stop()
                print(f"run {run} {via} {mode}: {row[mode]}", flush=True)
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
            results.append(row)
        print()
        print("| run | link | docker pull (s) | one pull per image: first / last start (s) | manifests/blobs "
              "| every attempt pulls: first / last start (s) | manifests/blobs | prefetch (s), then first / last start (s) | manifests/blobs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            d, n, p = r["dedup"], r["nodedup"], r["prefetch"]
            print(f"| {r['run']} | {r['link']} | {r['docker_pull_s']} | {d['first_start_s']} / {d['last_start_s']} "
                  f"| {d['registry_manifest_gets']}/{d['registry_blob_gets']} "
                  f"| {n['first_start_s']} / {n['last_start_s']} | {n['registry_manifest_gets']}/{n['registry_blob_gets']} "
                  f"| {p['prefetch_s']}, then {p['first_start_s']} / {p['last_start_s']} "
                  f"| {p['registry_manifest_gets']}/{p['registry_blob_gets']} |")
        if out:
            with open(out, "w") as f:
                json.dump({"tasks": TASKS, "nodes": NODES, "image_mib": 50, "link_mibps": LINK_MIBPS, "runs": results}, f, indent=1)
    finally:
        subprocess.run(["bash", REGISTRY, "stop", reg_dir], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
