"""Drives headless Chromium through the DevTools protocol against a running
Shepherd dashboard: logs in with tokens, checks the DOM of each page, and
saves a screenshot of each. Called by crates/cli/tests/ui.rs with a JSON
plan on stdin; exits non-zero with the reason on the first failed check.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client, from PyPI


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="shepherd-ui-")
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise SystemExit(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise SystemExit(f"script failed: {expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.eval(expression):
                return
            time.sleep(0.2)
        text = self.eval("document.getElementById('view').innerText.slice(0, 2000)")
        raise SystemExit(f"timed out waiting for {what}; the page says:\n{text}")

    def go(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", f"{url} to load")

    def screenshot(self, path):
        time.sleep(0.5)  # let the last paint land
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


LOGINS = [0]


def login(browser, base, token):
    browser.eval("sessionStorage.clear()")
    # A new URL: a whole new page (a reload could be raced by the old one).
    LOGINS[0] += 1
    browser.go(f"{base}/ui/?login={LOGINS[0]}#/")
    browser.wait_for("!!document.getElementById('token') && !document.getElementById('login-error')?.textContent", "the login form")
    browser.eval(f"document.getElementById('token').value = {json.dumps(token)};"
                 "document.getElementById('login-form').requestSubmit()")
    browser.wait_for("!document.getElementById('nav').hidden", "the logged-in navigation")


def main():
    plan = json.load(sys.stdin)
    base, shots = plan["base"], plan["screenshots"]
    os.makedirs(shots, exist_ok=True)
    b = Browser(plan["chromium"])
    try:
        # A wrong token is refused with a message.
        login_ok = False
        b.go(base + "/ui/")
        b.wait_for("!!document.getElementById('login-form')", "the login form")
        b.screenshot(os.path.join(shots, "login.png"))
        b.eval("document.getElementById('token').value = 'nonsense-token';"
               "document.getElementById('login-form').requestSubmit()")
        b.wait_for("!document.getElementById('login-error')?.hidden", "the refusal of a wrong token")

        # The admin: every page.
        login(b, base, plan["admin_token"])
        b.wait_for("!!document.querySelector('#plot-throughput svg') && !!document.getElementById('count-succeeded')", "the overview")
        if int(b.eval("document.querySelector('#count-succeeded .n').textContent")) < plan["succeeded_at_least"]:
            raise SystemExit("the overview counts fewer succeeded tasks than ran")
        b.screenshot(os.path.join(shots, "overview.png"))

        b.go(base + "/ui/#/tasks")
        b.wait_for(f"!!document.querySelector('tr[data-task-id=\"{plan['alpha_task']}\"]')", "alpha's task in the list")
        b.wait_for(f"!!document.querySelector('tr[data-task-id=\"{plan['beta_task']}\"]')", "beta's task in the admin's list")
        b.screenshot(os.path.join(shots, "tasks.png"))
        b.go(base + "/ui/#/tasks?state=failed")
        b.wait_for("document.getElementById('filter-state')?.value === 'failed'", "the filtered list")
        b.wait_for(f"!!document.querySelector('tr[data-task-id=\"{plan['failed_task']}\"]')", "the failed task in the list of failed ones")
        if b.eval(f"!!document.querySelector('tr[data-task-id=\"{plan['alpha_task']}\"]')"):
            raise SystemExit("a succeeded task in the list of failed ones")

        # A running task's page shows new output lines as they come.
        b.go(base + f"/ui/#/task/{plan['live_task']}")
        b.wait_for("(document.getElementById('log')?.textContent || '').includes('line 2')", "the live log's first lines")
        first = b.eval("document.getElementById('log').textContent")
        seen = max(int(line.split()[1]) for line in first.splitlines() if line.startswith("line "))
        later = f"line {seen + 2}\n"
        b.wait_for(f"(document.getElementById('log')?.textContent || '').includes({json.dumps(later)})", f"a new line ({later.strip()}) in the live log")
        b.screenshot(os.path.join(shots, "task.png"))

        # Arrays: the list with progress, one array with its failed index and its graph.
        b.go(base + "/ui/#/arrays")
        b.wait_for(f"!!document.querySelector('tr[data-array-id=\"{plan['array']}\"] .progress')", "the array with its progress")
        b.screenshot(os.path.join(shots, "arrays.png"))
        b.go(base + f"/ui/#/array/{plan['array']}")
        b.wait_for("(document.getElementById('failed-indices')?.textContent || '') === '1'", "the array's failed index")
        b.wait_for("document.querySelectorAll('#graph rect').length >= 2", "the array's dependency graph")
        b.screenshot(os.path.join(shots, "array.png"))

        b.go(base + "/ui/#/nodes")
        b.wait_for("!!document.querySelector('tr[data-node-id]')", "the node list")
        b.screenshot(os.path.join(shots, "nodes.png"))
        b.go(base + "/ui/#/projects")
        b.wait_for("!!document.querySelector('tr[data-project=\"alpha\"]') && !!document.querySelector('tr[data-project=\"beta\"]')", "the projects")
        b.screenshot(os.path.join(shots, "projects.png"))
        b.go(base + "/ui/#/audit")
        b.wait_for("document.querySelectorAll('#audit tbody tr').length > 0", "the audit log")
        b.screenshot(os.path.join(shots, "audit.png"))
        # What if: the last hours replayed beside what happened, with the plot.
        b.go(base + "/ui/#/whatif?hours=1&run=1")
        b.wait_for("(document.getElementById('whatif-table')?.textContent || '').includes('| alpha |')", "the replay's table")
        b.wait_for("(document.getElementById('whatif-plot')?.naturalWidth || 0) > 0", "the replay's plot")
        b.screenshot(os.path.join(shots, "whatif.png"))

        # A project token sees its own project only.
        login(b, base, plan["beta_token"])
        if not b.eval("document.querySelector('a[href=\"#/nodes\"]').hidden"):
            raise SystemExit("a project token is offered the nodes page")
        if not b.eval("document.querySelector('a[href=\"#/whatif\"]').hidden"):
            raise SystemExit("a project token is offered the what-if page")
        b.go(base + "/ui/#/tasks")
        b.wait_for(f"!!document.querySelector('tr[data-task-id=\"{plan['beta_task']}\"]')", "beta's own task")
        if b.eval("[...document.querySelectorAll('tr[data-task-id]')].some(r => r.querySelector('td:nth-child(2)').textContent !== 'beta')"):
            raise SystemExit("a project token sees another project's task")
        b.go(base + f"/ui/#/task/{plan['alpha_task']}")
        b.wait_for("!!document.getElementById('page-error')", "a refusal of another project's task")
        b.go(base + "/ui/#/projects")
        b.wait_for("!!document.querySelector('tr[data-project=\"beta\"]')", "beta's project")
        if b.eval("!!document.querySelector('tr[data-project=\"alpha\"]')"):
            raise SystemExit("a project token sees another project")
        login_ok = True
    finally:
        b.close()
    print("ok" if login_ok else "failed")


if __name__ == "__main__":
    main()
