"""Shared by the test files: a subprocess started at once and collected when a test needs it."""
import subprocess


class Launched:
    """A subprocess started now and collected when a test needs its result."""

    def __init__(self, argv, cwd, env, timeout=300):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.timeout, self._done = timeout, None

    def result(self):
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self._done

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
