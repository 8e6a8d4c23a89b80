"""What every benchmark report starts with: title, date, machine and the exact command."""
import datetime, os, platform, sys

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
