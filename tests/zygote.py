"""A Python that has imported what every ds_train run imports, and forks a ds_train run per request.

    python tests/zygote.py SOCKET      (started by tests/conftest.py, one per pytest worker)

A ds_train process spends about 6.5 s of this project's CI machine importing torch, DeepSpeed and the parts of
dynamo and inductor that DeepSpeed's engine pulls in, more than a short test run's training takes; the suite
starts some 250 of them. A forked child starts with all of that imported and then runs ds_train.main.main as
`python ds_train/main.py ARGS` would: in its own session (so killpg stops it and what it started), in the
request's folder, with the request's environment, its stdin from /dev/null and its stdout and stderr on the
file descriptors the request passed. Nothing here runs torch before forking: no thread pool exists to be
broken by the fork, and OMP_NUM_THREADS, which the OpenMP runtime reads only when it is loaded, is applied
in the child with torch.set_num_threads.

Protocol, over a SOCK_SEQPACKET Unix socket, one connection per run: the client sends the request as JSON
({"argv": [main.py, ARGS...], "env": {...}, "cwd": "..."}) with the stdout and stderr descriptors; the zygote
answers with the child's pid, then, when the child has ended, with its exit status as subprocess reports it
(negative for a signal). A handler process (forked from the zygote, which itself never waits) does the
waiting, so the zygote keeps one thread.
"""

import json
import os
import signal
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = REPO  # ds_train from this checkout, as main.py arranges for itself when run as a script

import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (torch.optim's optimizers import it on construction)
import deepspeed  # noqa: E402,F401
import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: E402,F401  (the engine's ZeRO check imports it, and inductor with it)
from ds_train import main as ds_train_main  # noqa: E402


def run(request: dict, stdout_fd: int, stderr_fd: int):
    """In the forked child: become `python ds_train/main.py ARGS` and never return."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)  # the run inherits no descriptor beyond its three
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stdout_fd)
    os.close(stderr_fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    sys.argv = list(request["argv"])
    try:
        code = ds_train_main.main(sys.argv[1:])
    except SystemExit as e:  # as the interpreter turns it into an exit status
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    ds_train_main.exit_without_teardown(code)


def handle(conn: socket.socket):
    """In a handler process: fork the run, report its pid, wait for it, report its exit status."""
    conn.settimeout(None)
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        conn.close()
        run(request, *fds)
    for fd in fds:
        os.close(fd)
    conn.send(str(pid).encode())
    _, status = os.waitpid(pid, 0)
    conn.send(str(os.waitstatus_to_exitcode(status)).encode())


def serve(path: str):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(64)
    server.settimeout(1.0)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the handlers are reaped by the kernel
    print("ready", flush=True)
    while os.getppid() == parent:  # the pytest worker that started it is gone: so is the need for it
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the handler waits for its run
            try:
                handle(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
