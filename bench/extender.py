#!/usr/bin/env python3
"""An HTTP scheduler extender for bench/plugins.sh: the built-in `spread`
scorer's logic (1 - the node's most used share after placing the task)
over HTTP/1.1 with keep-alive, standard library only. Prints its port."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def share(used, asked, capacity):
    return min(max((used + asked) / max(capacity, 1), 0.0), 1.0)


class Extender(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        task = body["task"]["resources"]
        if self.path.endswith("/score"):
            scores = {}
            for n in body["nodes"]:
                cpu = share(n["allocated"]["cpu_millicores"], task["cpu_millicores"], n["capacity"]["cpu_millicores"])
                mem = share(n["allocated"]["memory_mib"], task["memory_mib"], n["capacity"]["memory_mib"])
                scores[n["id"]] = 1.0 - max(cpu, mem)
            answer = {"scores": scores}
        else:
            answer = {"rejected": {}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Extender)
print(server.server_address[1], flush=True)
server.serve_forever()
