"""Starting `singlepoint serve` for the compatibility checks: on a free port, with the address
read from its log, its stderr drained in the background."""
import subprocess
import sys
import threading


def start(binary, args, cwd):
    """Starts `binary serve --port 0 ARGS` and returns (process, "host:port")."""
    proc = subprocess.Popen([binary, "serve", "--port", "0", *args], cwd=cwd,
                            stderr=subprocess.PIPE, text=True)
    address = None
    for line in proc.stderr:
        if "listening on http://" in line:
            address = line.split("listening on http://", 1)[1].split()[0]
            break
    if address is None:
        sys.exit("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, address
