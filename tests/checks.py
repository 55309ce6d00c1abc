"""checks.py - the pass/fail tally the Python test drivers share (server_hostile.py,
server_faults.py, chat_pty.py): each check counts, each failure prints one line naming the driver,
and finish() prints the summary and gives the exit status."""
import sys
import threading


class Checks:
    def __init__(self, name, detail=lambda d: str(d)[:500]):
        self.name, self.detail = name, detail
        self.count = self.failures = 0
        self.lock = threading.Lock()  # the server drivers check from several client threads

    def __call__(self, cond, what, detail=""):
        with self.lock:
            self.count += 1
            if not cond:
                self.failures += 1
                print(f"FAIL {self.name}: {what}: {self.detail(detail)}", file=sys.stderr)

    def finish(self):
        if self.failures:
            print(f"{self.name}: {self.failures} of {self.count} checks FAILED", file=sys.stderr)
            return 1
        print(f"{self.name}: {self.count} checks passed")
        return 0
