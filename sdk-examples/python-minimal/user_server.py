# A complete gateway user server in Python's standard library. /start begins a
# producer per configuration, /stop ends it; events go to the processor-client.
import base64, json, os, threading, time, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT = "http://127.0.0.1:" + os.environ.get("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "9393")
running = {}  # src -> threading.Event that stops its producer

def post(path, body):
    while True:  # 503 means "not now": wait as told, then send the same event again
        try:
            req = urllib.request.Request(CLIENT + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            return urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 503: raise
            time.sleep(int(e.headers.get("Retry-After", "1")))

def produce(cfg, stop):
    post("/activated", cfg)
    n = 0
    while not stop.wait(2):
        n += 1
        payload = json.dumps({"tick": n, "config": cfg["config"]}).encode()
        # "id" names the event: sent again (after a lost answer), it is delivered once.
        post("/event", {"src": cfg["src"], "payload": base64.b64encode(payload).decode(),
                        "id": f"{cfg['timeID']}/{n}"})

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        cfg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if cfg["src"] in running: running.pop(cfg["src"]).set()
        if self.path == "/start":
            running[cfg["src"]] = stop = threading.Event()
            threading.Thread(target=produce, args=(cfg, stop), daemon=True).start()
        self.send_response(200); self.end_headers()

port = int(os.environ.get("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "8080"))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
