#!/usr/bin/env bash
# Load benchmark of `callverify serve` against a sipp callee on 127.0.0.1 (README "Benchmarks").
#
#   scripts/bench-load.sh 200 800 1600 2400 3200     # concurrent calls: the capacity table
#   MODE=setup scripts/bench-load.sh 3000            # setup rate: 3000 calls at RATE/s, digest auth
#
# Capacity (MODE=load, the default), for each N: builds --release, starts `serve` (SQLite in a
# temporary directory, caps lifted, limits.sip_uri_hosts = ["127.0.0.1"], a metrics key) and
# sipp as the callee (a UAS that answers and streams PCMU until BYE: SECS_BEFORE_KEY seconds
# of silence, then an in-band '#'). N verifications are posted over 10 s; once all calls are
# up (or as many as serve took: an overloaded serve holds the rest in its queue, and the
# per-call figures divide by the calls up, callverify_calls_in_flight), CPU (utime+stime from
# /proc/PID/stat) of both processes is read over a 15 s window,
# then a 2 s capture (dumpcap on lo) of both RTP directions gives the send timing per stream,
# callverify's and, beside it, sipp's (the anchor's own sender in the same run); RSS per call is serve's VmRSS growth divided by N. Finally every verification must
# end `confirmed` (the callee's '#' detected).
#
# Setup rate (MODE=setup): N verifications posted at RATE per second (default 300); sipp
# challenges each INVITE (401, digest), answers the retried one and sends an RFC 4733 '#';
# reports the rate reached, every call that did not end `confirmed`, and how many SIP
# datagrams each side's kernel dropped at a full socket (whose side a failure was on).
#
# Environment: CALLVERIFY_BIN (skip the build and use this binary), SHARDS (sip.shards; unset:
# the default, one per core), RATE, SECS_BEFORE_KEY (default 36). Needs sipp, sox, dumpcap (tshark),
# python3. Run as a user allowed to capture on lo (root in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
  set -- 200 800 1600 2400
fi
if [ -z "${CALLVERIFY_BIN:-}" ]; then
  cargo build --release --bin callverify >&2
  CALLVERIFY_BIN="${CARGO_TARGET_DIR:-target}/release/callverify"
fi
export CALLVERIFY_BIN
export MODE="${MODE:-load}" SHARDS="${SHARDS:-}" RATE="${RATE:-300}"
export SECS_BEFORE_KEY="${SECS_BEFORE_KEY:-36}"
# Every call holds an RTP socket in serve and in sipp (and sipp one thread per 20 calls).
ulimit -n "$(ulimit -Hn)"
exec python3 - "$@" <<'PY'
import http.client, json, os, shutil, signal, statistics, struct, subprocess, sys, tempfile
import threading, time

BIN = os.environ["CALLVERIFY_BIN"]
MODE = os.environ["MODE"]
SHARDS = os.environ["SHARDS"]  # empty: the configuration default (binaries without sip.shards too)
RATE = float(os.environ["RATE"])
KEY_AT = int(os.environ["SECS_BEFORE_KEY"])
API = ("127.0.0.1", 18480)
SIP_PORT, UAS_PORT = 15460, 15470
RTP_LOW, RTP_HIGH = 20000, 29999          # serve's RTP ports: 5,000 even ones (the descriptor budget counts them)
UAS_RTP_LOW, UAS_RTP_HIGH = 40000, 59999  # sipp's
KEY = "cv_bench_load_key_0000000000001"
CLK = os.sysconf("SC_CLK_TCK")
POST_SECS = 10.0   # N verifications posted over this long
SETTLE_SECS = 4.0  # then every call is answered and streaming
WINDOW_SECS = 15.0 # CPU window
CAPTURE_SECS = 2   # send-timing capture
PTIME = 0.020
POLLERS = 32       # long-polling threads reading the results

def config(tmp, n):
    prompts = os.path.join(tmp, "prompts"); os.makedirs(prompts, exist_ok=True)
    auth = 'username = "verifier"\npassword = "s3cret"\n' if MODE == "setup" else ""
    return f'''[api]
listen = "{API[0]}:{API[1]}"
metrics_key = "{KEY}"
max_connections = 64
[[api.clients]]
name = "bench"
key = "{KEY}"
rate_per_minute = 0
[sip]
listen = "127.0.0.1:{SIP_PORT}"
allow_sip_uris = true
channels = {n + 50}
{f"shards = {SHARDS}" if SHARDS else ""}
{auth}
[media]
rtp_ports = "{RTP_LOW}-{RTP_HIGH}"
prompts = "{prompts}"
[call]
response_timeout_secs = 120
challenge_timeout_secs = 180
[store]
url = "sqlite://{tmp}/bench.db"
[limits]
countries = ["US"]
sip_uri_hosts = ["127.0.0.1"]
per_number_per_hour = 0
per_number_per_day = 0
per_client_per_minute = 0
per_client_per_hour = 0
per_client_per_day = 0
per_country_per_hour = 0
per_country_per_day = 0
global_per_hour = 0
global_per_day = 0
'''

UAS_HEAD = open("tests/scenarios/uas_stream.xml").read()

def stream_scenario():
    # uas_stream.xml, answering at once and streaming bench.ulaw in a loop until the BYE.
    s = UAS_HEAD.replace("@RING_MS@", "20").replace("@AUDIO@,1,0", "bench.ulaw,-1,0")
    return s.replace('timeout="40000"', f'timeout="{(KEY_AT + 120) * 1000}"')

def setup_scenario():
    s = open("tests/scenarios/uas_auth_401.xml").read()
    keys = ('  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_pound.pcap"/>'
            '</action></nop>\n  <pause milliseconds="600"/>\n')
    return s.replace("@KEYS@", keys).replace('<pause milliseconds="300"/>', '<pause milliseconds="0"/>')

def make_audio(tmp):
    # KEY_AT s of silence, 0.4 s of '#' (941 + 1477 Hz, -6 dBFS), 1 s of silence, mu-law.
    run = lambda *a: subprocess.run(a, check=True, cwd=tmp)
    run("sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "sil.wav", "trim", "0", str(KEY_AT))
    run("sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "tone.wav", "synth", "0.4", "sine", "941", "sine", "1477", "gain", "-n", "-6")
    run("sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "tail.wav", "trim", "0", "1")
    run("sox", "sil.wav", "tone.wav", "tail.wav", "-e", "u-law", "-t", "raw", "bench.ulaw")

def udp_drops(port):
    """Datagrams the kernel dropped at the UDP socket bound to 127.0.0.1:port (its buffer full)."""
    for line in open("/proc/net/udp").readlines()[1:]:
        f = line.split()
        if f[1] == f"0100007F:{port:04X}":
            return int(f[-1])
    return 0

def metric(name):
    """A counter or gauge of serve's /metrics (0 when absent)."""
    status, data = api("GET", "/metrics")
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)

def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def api(method, path, body=None, conn=None):
    c = conn or http.client.HTTPConnection(*API, timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, data

def post_all(n, over_secs):
    """Posts n verifications evenly over `over_secs` from 8 threads; their ids and the time taken."""
    ids = [None] * n
    start = time.monotonic()
    def worker(k):
        conn = http.client.HTTPConnection(*API, timeout=60)
        for i in range(k, n, 8):
            wait = start + i * over_secs / n - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            body = {"phone_number": f"sip:bench{i}@127.0.0.1:{UAS_PORT}", "mode": "standard"}
            status, data = api("POST", "/v1/verifications", body, conn)
            if status == 201:
                ids[i] = json.loads(data)["id"]
            else:
                print(f"POST {i}: {status} {data[:200]!r}", file=sys.stderr)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    return ids, time.monotonic() - start

def results(ids, limit_secs):
    """The result of every verification (long-polled until completed or the limit).

    POLLERS threads each long-poll their share in turn: with fewer, a slow answer under load
    delayed the later ids past the limit and counted completed calls as not completed."""
    out = {}
    deadline = time.monotonic() + limit_secs
    lock = threading.Lock()
    def worker(k):
        conn = http.client.HTTPConnection(*API, timeout=60)
        for i in range(k, len(ids), POLLERS):
            vid = ids[i]
            if vid is None:
                continue
            result = "not_completed"
            while time.monotonic() < deadline:
                status, data = api("GET", f"/v1/verifications/{vid}?wait=20", None, conn)
                v = json.loads(data) if status == 200 else {}
                if v.get("status") == "completed":
                    result = v.get("result", "?")
                    break
            with lock:
                out[vid] = result
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(POLLERS)]
    for t in threads: t.start()
    for t in threads: t.join()
    return out

def read_pcap(path):
    """(time, src port, dst port) of every UDP packet of a classic pcap (DLT_EN10MB on lo)."""
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    endian, nano = {0xa1b2c3d4: ("<", False), 0xa1b23c4d: ("<", True)}.get(magic, (">", False))
    link = struct.unpack(endian + "I", data[20:24])[0]
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        pkt = data[off + 16: off + 16 + incl]
        off += 16 + incl
        ip = pkt[14:] if link == 1 else pkt[16:] if link == 113 else pkt[4:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack(">HH", ip[ihl:ihl + 4])
        out.append((sec + frac / (1e9 if nano else 1e6), sport, dport))
    return out

def timing(packets):
    """Send jitter |gap - 20 ms| (mean, p99), largest gap, packets per stream per 2 s."""
    streams = {}
    for t, s, d in packets:
        streams.setdefault((s, d), []).append(t)
    dev, largest, counts = [], 0.0, []
    for times in streams.values():
        times.sort()
        counts.append(len(times))
        for a, b in zip(times, times[1:]):
            dev.append(abs(b - a - PTIME))
            largest = max(largest, b - a)
    dev.sort()
    mean = statistics.fmean(dev) if dev else float("nan")
    p99 = dev[min(len(dev) - 1, int(len(dev) * 0.99))] if dev else float("nan")
    pps = statistics.fmean(counts) if counts else 0.0
    return mean * 1e3, p99 * 1e3, largest * 1e3, pps * 2 / CAPTURE_SECS, len(streams)

def start(tmp, n, scenario):
    open(os.path.join(tmp, "serve.toml"), "w").write(config(tmp, n))
    open(os.path.join(tmp, "uas.xml"), "w").write(scenario)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVERIFY_")}
    env["RUST_LOG"] = "warn"
    serve = subprocess.Popen([BIN, "serve", "--config", os.path.join(tmp, "serve.toml")],
                             stdout=open(os.path.join(tmp, "serve.log"), "w"), stderr=subprocess.STDOUT, env=env)
    sipp = subprocess.Popen(["sipp", "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(UAS_PORT),
                             "-mp", str(UAS_RTP_LOW),
                             # 4 MB socket buffers (net.core.rmem_max here): with the default
                             # 208 KB, a 300/s burst overflowed sipp's own SIP socket and it
                             # aborted the calls whose ACK to its 401 the kernel had dropped.
                             "-buff_size", "4194304",
                             "-max_socket", "15000", "-nostdin", "-trace_err", "-trace_stat", "-fd", "1",
                             "-timeout_error", "-aa"],
                            cwd=tmp, stdout=open(os.path.join(tmp, "sipp.log"), "w"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if api("GET", "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if serve.poll() is not None:
            sys.exit("serve exited:\n" + open(os.path.join(tmp, "serve.log")).read())
        time.sleep(0.1)
    return serve, sipp

def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()

def load(n):
    tmp = tempfile.mkdtemp(prefix="bench-load-")
    make_audio(tmp)
    serve, sipp = start(tmp, n, stream_scenario())
    try:
        rss0 = rss_kb(serve.pid)
        ids, posted_in = post_all(n, POST_SECS)
        time.sleep(SETTLE_SECS)
        up0 = metric("callverify_calls_in_flight")
        c0, s0, t0 = cpu_ticks(serve.pid), cpu_ticks(sipp.pid), time.monotonic()
        time.sleep(WINDOW_SECS)
        c1, s1, t1 = cpu_ticks(serve.pid), cpu_ticks(sipp.pid), time.monotonic()
        # Calls up during the window: all N, unless serve held some back as overloaded.
        up = max(1, round((up0 + metric("callverify_calls_in_flight")) / 2))
        waits = metric("callverify_dialer_overload_waits_total")
        rss1 = rss_kb(serve.pid)
        cap = os.path.join(tmp, "send.pcap")
        subprocess.run(["dumpcap", "-q", "-i", "lo", "-P", "-s", "64", "-B", "256", "-a", f"duration:{CAPTURE_SECS}",
                        "-f", f"udp and portrange {RTP_LOW}-{RTP_HIGH} and portrange {UAS_RTP_LOW}-{UAS_RTP_HIGH}",
                        "-w", cap], check=True, stderr=subprocess.DEVNULL)
        packets = read_pcap(cap)
        ours = [p for p in packets if RTP_LOW <= p[1] <= RTP_HIGH]
        theirs = [p for p in packets if RTP_LOW <= p[2] <= RTP_HIGH]
        mean, p99, gap, per2s, streams = timing(ours)
        sipp_mean, sipp_p99, sipp_gap, _, _ = timing(theirs)
        done = results(ids, KEY_AT + 240)
    finally:
        stop(serve, sipp)
    secs = t1 - t0
    cv = 100.0 * (c1 - c0) / CLK / secs / up
    sp = 100.0 * (s1 - s0) / CLK / secs / up
    confirmed = sum(1 for r in done.values() if r == "confirmed")
    others = {}
    for r in done.values():
        if r != "confirmed":
            others[r] = others.get(r, 0) + 1
    row = (f"| {n:,} | {up:,} | {cv:.4f} | {sp:.4f} | {mean:.2f} ms | {p99:.2f} ms | {gap:.0f} ms "
           f"| {sipp_mean:.2f} / {sipp_p99:.2f} / {sipp_gap:.0f} ms | {per2s:.1f} "
           f"| {(rss1 - rss0) / up:.1f} KB | {confirmed}/{n} |")
    note = (f"posted in {posted_in:.1f} s; {streams} streams captured; not confirmed: {others or 'none'}; "
            f"overload waits of the dialer: {waits:.0f}; logs: {tmp}")
    return row, note, tmp

def setup(n):
    tmp = tempfile.mkdtemp(prefix="bench-setup-")
    serve, sipp = start(tmp, n, setup_scenario())
    try:
        ids, posted_in = post_all(n, n / RATE)
        done = results(ids, 300)
        # Read before the sockets close: whose buffer overflowed, if a call failed.
        drops = (udp_drops(SIP_PORT), udp_drops(UAS_PORT))
    finally:
        stop(serve, sipp)
    confirmed = sum(1 for r in done.values() if r == "confirmed")
    failed = {}
    for r in done.values():
        if r != "confirmed":
            failed[r] = failed.get(r, 0) + 1
    missing = sum(1 for i in ids if i is None)
    return (f"| {n:,} | {n / posted_in:.0f}/s | {confirmed} | {n - confirmed} | {failed or 'none'} "
            f"| {missing} POSTs refused | {drops[0]} / {drops[1]} |", tmp, confirmed == n)

if MODE == "setup":
    print("| calls | rate reached | confirmed | failed | results | API "
          "| SIP datagrams dropped by a full socket: callverify / sipp |")
    print("|---|---|---|---|---|---|---|")
    for n in map(int, sys.argv[1:]):
        row, tmp, clean = setup(n)
        print(row, flush=True)
        if clean:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs: {tmp}")
else:
    print(f"sip.shards: {SHARDS or 'default'} on {os.cpu_count()} cores; '#' after {KEY_AT} s")
    print("| calls posted | calls up (held back: overload) | callverify, % of a core per call | sipp callee, same run | mean jitter | p99 jitter "
          "| largest gap | sipp's sending, same run: mean / p99 jitter, largest gap "
          "| packets per stream per 2 s | RSS per call | '#' detected |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for n in map(int, sys.argv[1:]):
        row, note, tmp = load(n)
        print(row, flush=True)
        notes.append(f"{n}: {note}")
        time.sleep(2)
    for note in notes:
        print(note)
PY
