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
