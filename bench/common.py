"""What every benchmark report starts with: title, date, machine and the exact command."""
import datetime, json, os, platform, re, signal, subprocess, sys, threading, time
import urllib.request

def header(title, script):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    return [f"# {title}\n",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores ({cpu}), {gib} GiB, {platform.system()} {platform.release()}",
            f"- command: `python3 bench/{script} {' '.join(sys.argv[1:])}`"]


def free_port():
    """A loopback port nothing listens on now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_list(root, n=200):
    """The first n web-size benchmark photos, listed one per line in a temporary file (for wrk)."""
    import glob, sys, tempfile
    photos = sorted(glob.glob(os.path.join(root, "bench", "data", "web", "*.jpg")))[:n]
    if len(photos) < 100:
        sys.exit("run `python3 bench/make_photos.py` first (needs 100+ web-size photos)")
    listing = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    listing.write("\n".join(photos) + "\n")
    listing.close()
    return listing.name


def tree_rss(pid):
    """Resident bytes of a process and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        try:
            for line in open(f"/proc/{q}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(q, []))
    return total


class Side:
    """One server under wrk: started and waited for until ready, then paused (SIGSTOP) except
    while it is measured. `listing` is photo_list's file; `mode` is serve.lua's."""

    def __init__(self, listing, name, cmd, url, path, mode, ready_path, env=None,
                 script="serve.lua", wrk_threads=1):
        self.listing, self.script, self.wrk_threads = listing, script, wrk_threads
        self.name, self.url, self.path, self.mode = name, url, path, mode
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        while True:
            try:
                with urllib.request.urlopen(url + ready_path, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > 120:
                sys.exit(f"{name} did not start")
            time.sleep(0.005)
        self.ready_s = time.perf_counter() - t0

    def pause(self):
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def load(self, concurrency, seconds):
        # Only the side under load runs: an idle LitServe polls its queues (a quarter of a core
        # here), so the others are stopped (SIGSTOP) while one is measured.
        os.killpg(self.proc.pid, signal.SIGCONT)
        time.sleep(0.5)
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss(self.proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out = subprocess.run(
            ["wrk", f"-t{self.wrk_threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "--latency",
             "-s", os.path.join(os.path.dirname(os.path.abspath(__file__)), self.script),
             self.url + self.path, "--", self.listing, self.mode, f"{time.time_ns()}"], capture_output=True, text=True, check=True).stdout
        stop.set()
        sampler.join()
        self.pause()
        line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
        r = json.loads(line[len("WRKJSON "):])
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        r["non2xx"] = int(non2xx.group(1)) if non2xx else 0
        r["rps"] = r["requests"] / r["seconds"]
        r["rss_mib"] = peak[0] / 2**20
        return r

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGCONT)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
