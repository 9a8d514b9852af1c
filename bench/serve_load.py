"""Load test of a running `qwq serve` for the GPU machine, where there is no .NET to run the C# LoadGenerator:
N concurrent streaming chat clients for S seconds (bounded in count and time, loopback only), each sending one
request after another. Prints completed requests, designed 429s, failures, p50/p99 latency, time to first token and
aggregate generated tok/s (usage of each response). Usage:
    python3 bench/serve_load.py http://127.0.0.1:8000 --clients 64 --seconds 60 --max-tokens 256"""
import argparse, json, threading, time, urllib.error, urllib.request

p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("--clients", type=int, default=64)
p.add_argument("--seconds", type=float, default=60)
p.add_argument("--max-tokens", type=int, default=256)
a = p.parse_args()
assert a.url.startswith("http://127.") or a.url.startswith("http://localhost"), "loopback only"

lock = threading.Lock()
lat, ttft, tokens, rejected, failed = [], [], [0], [0], []
deadline = time.monotonic() + a.seconds

def client(i):
    n = 0
    while time.monotonic() < deadline:
        body = json.dumps({"messages": [{"role": "user", "content": f"Client {i}, request {n}: how many r's are in strawberry?"}],
                           "max_tokens": a.max_tokens, "stream": True, "stream_options": {"include_usage": True},
                           "seed": i * 1000 + n}).encode()
        req = urllib.request.Request(a.url.rstrip("/") + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        t0 = time.monotonic(); first = None; used = 0; done = False
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                for line in r:
                    line = line.strip()
                    if not line.startswith(b"data:"): continue
                    data = line[5:].strip()
                    if data == b"[DONE]": done = True; break
                    chunk = json.loads(data)
                    if first is None and chunk.get("choices"): first = time.monotonic() - t0
                    if chunk.get("usage"): used = chunk["usage"]["completion_tokens"]
            with lock:
                if done: lat.append(time.monotonic() - t0); ttft.append(first or 0); tokens[0] += used
                else: failed.append("stream ended without [DONE]")
        except urllib.error.HTTPError as e:
            with lock:
                if e.code == 429: rejected[0] += 1; time.sleep(float(e.headers.get("Retry-After", "1")))
                else: failed.append(f"HTTP {e.code}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            with lock: failed.append(repr(e))
        n += 1

start = time.monotonic()
threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.monotonic() - start
q = lambda xs, f: sorted(xs)[min(len(xs) - 1, int(f * len(xs)))] if xs else float("nan")
print(json.dumps({"clients": a.clients, "seconds": round(wall, 1), "max_tokens": a.max_tokens, "completed": len(lat),
                  "rejected_429": rejected[0], "failed": len(failed), "failures": failed[:5],
                  "latency_p50_s": round(q(lat, .5), 2), "latency_p99_s": round(q(lat, .99), 2),
                  "ttft_p50_s": round(q(ttft, .5), 3), "ttft_p99_s": round(q(ttft, .99), 3),
                  "generated_tokens": tokens[0], "tokens_per_second": round(tokens[0] / wall, 1)}))
