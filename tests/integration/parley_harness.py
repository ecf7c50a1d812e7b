"""Starts and stops the real Parley binary for the integration suites.

Every suite file runs standalone (`/usr/bin/python3 tests/integration/test_x.py`), prints
unittest's summary and exits non-zero on failure. The binary comes from $PARLEY_BIN (ctest sets
it); without it, build/parley in the repository is used if present.

A server is started on a free loopback port with a fresh temporary data directory; its stdout
and stderr go to a log file whose tail is printed when a test fails. Stopping it sends SIGTERM and
requires exit code 0 within 5 s (otherwise it is killed with SIGKILL and the stop fails).
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Servers currently running, so a failing test can show their logs.
_LIVE_SERVERS = []


def parley_bin():
    """Path of the binary under test."""
    path = os.environ.get("PARLEY_BIN")
    if path:
        return path
    for candidate in ("build/parley", "build-asan/parley"):
        full = os.path.join(_REPO, candidate)
        if os.access(full, os.X_OK):
            return full
    raise RuntimeError("PARLEY_BIN is not set and no build/parley exists")


def free_port():
    """A loopback port that was free a moment ago (bound to 0, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(AssertionError):
    """The server did not start, or did not stop as the contract says."""


class ParleyServer:
    """One running `parley` process.

    `args` are extra flags, e.g. ["--limits.heartbeat_ms=300"]. `echo=True` adds
    --debug.echo_endpoint=true.
    """

    def __init__(self, args=(), echo=False, threads=2, name="parley"):
        self.extra_args = list(args)
        if echo:
            self.extra_args.append("--debug.echo_endpoint=true")
        self.threads = threads
        self.name = name
        self.proc = None
        self.port = None
        self.tmpdir = None
        self.log_path = None
        self._log_file = None
        self.returncode = None

    # ---- lifecycle ----

    def start(self, ready_timeout=10.0):
        self.tmpdir = tempfile.mkdtemp(prefix="parley-it-")
        self.log_path = os.path.join(self.tmpdir, "server.log")
        last_error = None
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            data = os.path.join(self.tmpdir, "data-%d" % self.port)
            cmd = [parley_bin(), "--listen", "127.0.0.1:%d" % self.port, "--data", data,
                   "--threads", str(self.threads)] + self.extra_args
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            try:
                self._wait_ready(ready_timeout)
                _LIVE_SERVERS.append(self)
                return self
            except ServerError as e:
                last_error = e
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                    break  # running but not healthy: not a port clash
                self._log_file.close()
        self._cleanup_files(keep_log=True)
        raise ServerError("%s did not become ready: %s\n%s" % (self.name, last_error,
                                                                 self.log_tail()))

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError("exited with code %d before becoming ready"
                                  % self.proc.returncode)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    return
                last = "GET /healthz answered %d %r" % (resp.status, body)
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise ServerError("/healthz not 200 within %.1f s (%s)" % (timeout, last))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=5.0):
        """Waits for the process to exit; kills it with SIGKILL on timeout. Returns the exit code
        or None when it had to be killed."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
            return self.returncode
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.returncode = None
            return None

    def stop(self, sig=signal.SIGTERM, timeout=5.0, check=True):
        """Stops the server with `sig`; with check, fails unless it exits 0 within `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        tail = self.log_tail()
        self._cleanup_files(keep_log=rc != 0)
        self.proc = None
        if check and rc != 0:
            if rc is None:
                what = "did not exit within %.1f s of %s (killed)" % (timeout,
                                                                      signal.Signals(sig).name)
            else:
                what = "exited with code %d after %s" % (rc, signal.Signals(sig).name)
            raise ServerError("%s %s\n%s" % (self.name, what, tail))

    def _cleanup_files(self, keep_log):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmpdir and not keep_log:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        elif self.tmpdir:
            # Keep only the log for post-mortem; the data can go.
            for entry in os.listdir(self.tmpdir):
                full = os.path.join(self.tmpdir, entry)
                if os.path.isdir(full):
                    shutil.rmtree(full, ignore_errors=True)

    def log_tail(self, lines=60):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return "(no server log)"
        tail = text.splitlines()[-lines:]
        return ("---- %s log (%s), last %d lines ----\n" % (self.name, self.log_path, len(tail)) +
                "\n".join(tail) + "\n---- end of log ----")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- addresses ----

    @property
    def host(self):
        return "127.0.0.1"

    def ws_url(self, path="/ws"):
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def connect(self, timeout=5.0):
        """A raw TCP socket connected to the server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop(check=exc_type is None)
        return False


class ServerTestCase(unittest.TestCase):
    """A test class sharing one server: set `server_args` / `server_echo` on the subclass."""

    server_args = ()
    server_echo = False
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = ParleyServer(cls.server_args, echo=cls.server_echo,
                                  name="parley[%s]" % cls.__name__).start()

    @classmethod
    def tearDownClass(cls):
        server, cls.server = cls.server, None
        if server is not None:
            server.stop()

    def tearDown(self):
        # Attribute a crash to the test that caused it, not to the class teardown.
        server = type(self).server
        if server is not None and not server.alive():
            self.fail("the server process died during this test\n" + server.log_tail())

    def assertServerAlive(self):
        self.assertTrue(self.server.alive(), "server process died\n" + self.server.log_tail())


class _LogOnFailureResult(unittest.TextTestResult):
    """Prints the logs of the running servers next to the first few failures or errors."""

    _MAX_DUMPS = 5
    _dumps = 0

    def _dump_logs(self):
        if _LogOnFailureResult._dumps >= self._MAX_DUMPS:
            return
        _LogOnFailureResult._dumps += 1
        for server in list(_LIVE_SERVERS):
            self.stream.write("\n" + server.log_tail(40) + "\n")
            self.stream.flush()

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._dump_logs()

    def addError(self, test, err):
        super().addError(test, err)
        self._dump_logs()

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._dump_logs()


def main(sort_key=None):
    """Runs the calling module's tests; exits non-zero on failure. `sort_key` orders the test
    methods of a class (by name); default: alphabetical."""
    runner = unittest.TextTestRunner(resultclass=_LogOnFailureResult, verbosity=2,
                                     stream=sys.stderr)
    loader = unittest.TestLoader()
    if sort_key is not None:
        loader.sortTestMethodsUsing = lambda a, b: ((sort_key(a) > sort_key(b)) -
                                                    (sort_key(a) < sort_key(b)))
    unittest.main(module="__main__", testRunner=runner, testLoader=loader)
