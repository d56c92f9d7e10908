"""A GGUF model split across RPC devices, run by llama.cpp in a worker process.

llama.cpp's RPC client aborts its whole process when a server stops answering in the middle of a call (ggml-rpc's
asserts), and it keeps every server it was given registered for the life of the process. In the user's process
that would mean a device unplugged mid-generation kills their program with no message, and a later load fails
on the dead registration. So ``load(path, devices=...)`` runs ``LlamaSession`` here, in a child: a lost device
ends the child, and the user's process gets one typed line naming the servers that no longer answer; every load
starts with a fresh registry.

Protocol: requests are JSON lines on the child's stdin; replies are JSON lines on a pipe of their own (llama.cpp
may print to stdout), an array reply followed by its raw bytes. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import errors
from ..core.tensors import TensorSpec
from ..errors import EdgeError, InferenceError
from .base import Session

REPLY_TIMEOUT_S = 600.0  # one call (a load, a long prompt over a slow link); a silent server beyond it is lost


class WorkerLlamaSession(Session):
    """``LlamaSession``'s API, served by a child process that holds the model and its RPC connections."""

    def __init__(self, path: Path, threads: int | None, n_ctx: int, embedding: bool, logits_all: bool,
                 n_gpu_layers: int, devices) -> None:
        from .rpc import parse_devices

        self.devices = parse_devices(devices)
        read_fd, write_fd = os.pipe()
        self._log = tempfile.TemporaryFile()  # llama.cpp's messages: a file, so a chatty child never blocks on a pipe
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgelift.runtimes.llama_worker", str(write_fd)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=self._log, pass_fds=(write_fd,),
            env={**os.environ, "GGML_NO_BACKTRACE": "1"})  # ggml's abort would attach gdb: seconds, and a trace
        os.close(write_fd)
        self._replies, self._pending = read_fd, bytearray()
        try:
            opened = self._call("open", path=str(path), threads=threads, n_ctx=n_ctx, embedding=embedding,
                                logits_all=logits_all, n_gpu_layers=n_gpu_layers,
                                devices=[f"{d.endpoint}={d.memory_bytes}" if d.memory_bytes else d.endpoint
                                         for d in self.devices])
        except BaseException:
            self.close()  # a refused load (a server not reachable, a bad option): the worker ends with it
            raise
        self.architecture, self.n_vocab, self.n_ctx = opened["architecture"], opened["n_vocab"], opened["n_ctx"]
        self.tensor_split, self.logits_all, self.n_gpu_layers = opened["tensor_split"], logits_all, n_gpu_layers
        self.device_buffers: dict[str, dict[str, int]] = opened["device_buffers"]
        self.worker_pid = self._proc.pid
        self.inputs = [TensorSpec("tokens", (None,), "int32")]
        self.outputs = [TensorSpec("logits", (None, self.n_vocab), "float32")]

    # -- the session API --

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"logits": self._call("run", tokens=[int(t) for t in feeds["tokens"]])}

    def eval_tokens(self, ids: list[int], reset: bool = False) -> np.ndarray:
        return self._call("eval_tokens", ids=[int(t) for t in ids], reset=reset)

    def tokenize(self, text: str, add_bos: bool = True) -> np.ndarray:
        return self._call("tokenize", text=text, add_bos=add_bos)

    def detokenize(self, ids) -> str:
        return self._call("detokenize", ids=[int(t) for t in ids])

    def embed(self, text: str) -> np.ndarray:
        return self._call("embed", text=text)

    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
                 **sampling) -> str | Iterator[str]:
        self._send("generate", prompt=prompt, max_tokens=max_tokens, temperature=temperature, sampling=sampling)
        pieces = self._pieces()
        if stream:
            return pieces
        return "".join(pieces)

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        self._proc = None
        try:
            if proc.poll() is None:
                proc.stdin.write(b'{"op": "close"}\n')
                proc.stdin.flush()
                proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            os.close(self._replies)
            self._log.close()
            proc.stdin.close()

    # -- the pipe --

    def _pieces(self) -> Iterator[str]:
        finished = False
        try:
            while True:
                reply = self._reply()  # an error reply raises; the worker sends nothing after it
                if "piece" not in reply:
                    finished = True
                    return
                yield reply["piece"]
        except GeneratorExit:
            raise
        except BaseException:
            finished = True
            raise
        finally:
            while not finished and self._proc is not None:  # a stream left early: read the rest, keep the pipe in step
                finished = "piece" not in self._reply()

    def _call(self, op: str, **args):
        self._send(op, **args)
        return self._reply()["value"]

    def _send(self, op: str, **args) -> None:
        if self._proc is None:
            raise errors.ModelClosedError("the split model was closed, or its worker ended: load it again")
        try:
            self._proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:
            self._lost()

    def _fill(self, until) -> bytes:
        """Read the reply pipe until ``until(pending)`` gives a cut position; the bytes before it."""
        while (cut := until(self._pending)) is None:
            ready, _, _ = select.select([self._replies], [], [], REPLY_TIMEOUT_S)
            chunk = os.read(self._replies, 1 << 16) if ready else b""
            if not chunk:
                self._lost(timed_out=not ready)
            self._pending += chunk
        head = bytes(self._pending[:cut])
        del self._pending[:cut]
        return head

    def _reply(self) -> dict:
        line = self._fill(lambda b: b.index(b"\n") + 1 if b"\n" in b else None)
        reply = json.loads(line)
        if "error" in reply:
            kind, message = reply["error"]
            cls = getattr(errors, kind, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, EdgeError) else InferenceError)(message)
        if "array" in reply:
            dtype, shape = np.dtype(reply["array"]["dtype"]), tuple(reply["array"]["shape"])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            raw = self._fill(lambda b: nbytes if len(b) >= nbytes else None)
            reply["value"] = np.frombuffer(raw, dtype).reshape(shape).copy()
        return reply

    def _lost(self, timed_out: bool = False) -> None:
        """The worker ended (or stopped answering): say which devices no longer answer."""
        from .rpc import check_reachable

        proc, self._proc = self._proc, None
        if timed_out:
            proc.kill()
        code = proc.wait()
        self._log.seek(0)
        tail = self._log.read()[-2000:].decode(errors="replace")
        os.close(self._replies)
        self._log.close()
        proc.stdin.close()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        try:
            check_reachable(self.devices)
            down = "every server still accepts connections"
        except errors.InvalidOptionError as e:
            down = str(e).split(";")[0]
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        last = lines[-1].rsplit("/", 1)[-1] if lines else ""  # ggml's abort message, from its source file on
        raise InferenceError(
            f"the split model's llama.cpp worker {'stopped answering' if timed_out else 'ended'} ({how}): {down}"
            + (f"; llama.cpp said: {last[:160]}" if last else "")
            + "; restart the servers (edge serve-rpc) and load the model again")


def _serve(reply_fd: int) -> None:
    """The child: one LlamaSession, requests from stdin until 'close' or EOF."""
    from .llama import LlamaSession

    out = os.fdopen(reply_fd, "wb")

    def send(**msg) -> None:
        value = msg.get("value")
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            out.write(json.dumps({"array": {"dtype": a.dtype.str, "shape": list(a.shape)}}).encode() + b"\n")
            out.write(a.tobytes())
        else:
            out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    session = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "close":
            break
        try:
            if op == "open":
                session = LlamaSession(Path(req["path"]), req["threads"], req["n_ctx"], req["embedding"],
                                       req["logits_all"], req["n_gpu_layers"], req["devices"])
                send(value={"architecture": session.architecture, "n_vocab": session.n_vocab,
                            "n_ctx": session.n_ctx, "tensor_split": session.tensor_split,
                            "device_buffers": session.device_buffers})
            elif op == "run":
                send(value=session.run({"tokens": np.asarray(req["tokens"], np.int32)})["logits"])
            elif op == "eval_tokens":
                send(value=session.eval_tokens(req["ids"], req["reset"]))
            elif op == "tokenize":
                send(value=session.tokenize(req["text"], req["add_bos"]))
            elif op == "detokenize":
                send(value=session.detokenize(req["ids"]))
            elif op == "embed":
                send(value=session.embed(req["text"]))
            elif op == "generate":
                for piece in session.generate(req["prompt"], req["max_tokens"], req["temperature"], stream=True,
                                              **req["sampling"]):
                    send(piece=piece)
                send(value=None)
        except EdgeError as e:
            send(error=[type(e).__name__, str(e)])
        except Exception as e:  # noqa: BLE001  (llama-cpp-python's own errors: one line for the parent)
            send(error=["InferenceError", f"llama.cpp: {' '.join(str(e).split())[:300] or type(e).__name__}"])
    if session is not None:
        session.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
