"""The handler bodies of the generated user server: the only hand-written code.

main.py and models.py are fastapi-code-generator's output for
openapi/user-server.yaml; each generated handler calls the function of the same
name here. Each configuration's value is JSON {"count": N, "interval_ms": M}
(count absent: forever); {"reject": true} is refused with 400, which the
processor-client shows as the configuration's Error message.
"""
import base64
import json
import os
import threading
import urllib.error
import urllib.request

from fastapi import HTTPException

from .models import ConfigData

CLIENT = "http://127.0.0.1:" + os.environ.get("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "9393")
_running: dict[str, threading.Event] = {}
_lock = threading.Lock()


def _post(path: str, body: dict, stop: threading.Event) -> bool:
    """POSTs until the processor-client answers 2xx; 503 waits Retry-After."""
    data = json.dumps(body).encode()
    while not stop.is_set():
        request = urllib.request.Request(CLIENT + path, data, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
            return True
        except urllib.error.HTTPError as e:
            if e.code != 503:
                return False
            stop.wait(float(e.headers.get("Retry-After", "1")))
        except OSError:
            stop.wait(0.1)
    return False


def _produce(cfg: ConfigData, settings: dict, stop: threading.Event) -> None:
    _post("/activated", cfg.model_dump(), stop)
    count = settings.get("count")
    interval = settings.get("interval_ms", 1000) / 1000.0
    seq = 0
    while not stop.is_set() and (count is None or seq < count):
        payload = json.dumps({"src": cfg.src, "seq": seq, "id": cfg.id, "timeID": cfg.timeID}).encode()
        _post("/event", {"src": cfg.src, "payload": base64.b64encode(payload).decode()}, stop)
        seq += 1
        stop.wait(interval)


def start(body: ConfigData) -> None:
    try:
        settings = json.loads(body.config)
    except ValueError:
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    if settings.get("reject"):
        raise HTTPException(status_code=400, detail="invalid configuration: reject requested")
    stop = threading.Event()
    with _lock:
        previous = _running.pop(body.src, None)
        _running[body.src] = stop
    if previous:
        previous.set()
    threading.Thread(target=_produce, args=(body, settings, stop), daemon=True).start()


def stop(body: ConfigData) -> None:
    with _lock:
        running = _running.pop(body.src, None)
    if running:
        running.set()
