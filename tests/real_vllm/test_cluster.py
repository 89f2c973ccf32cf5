"""`kvbench cluster up|down`: command lines, failures in one line, and (marked vllm) a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kvbench.errors import KvbenchError
from kvbench.http.cluster import (
    WorkerOptions,
    cluster_options,
    log_tail,
    read_cluster,
    register_cluster,
    server_command,
    server_env,
    stop_cluster,
    stop_pid,
)
from kvbench.vllm_plugin.config import ENV_NAME, ENV_SEED, config_from_env


@pytest.fixture
def fake_model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    cfg = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 128,
           "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _app() -> typer.Typer:
    app = typer.Typer()
    register_cluster(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # keeps `cluster` a sub-command group
        pass

    return app


def test_served_model_name_can_be_chosen_and_must_be_one_word(fake_model):
    (opts,), _ = cluster_options(str(fake_model), 1, "lru", 0, 18120, True, None, None, None, "127.0.0.1", False,
                                 served_model_name="org/tiny")
    assert opts.served_model_name == "org/tiny"
    with pytest.raises(KvbenchError, match="--served-model-name"):
        cluster_options(str(fake_model), 1, "lru", 0, 18120, True, None, None, None, "127.0.0.1", False,
                        served_model_name="two words")


def test_cpu_command_line_sizes_the_kv_cache_from_tokens(fake_model):
    (opts,), device = cluster_options(str(fake_model), 1, "rlt", 3, 18120, True, 64, 4096, None, "127.0.0.1", True)
    assert device == "cpu" and opts.port == 18120 and opts.kv_events_port == 18121
    cmd = server_command(opts)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--kv-cache-memory-bytes"] == str(4096 * 2 * 2 * 4 * 32 * 2)  # bf16 K+V, 2 layers, 4 heads x 32
    assert flag["--block-size"] == "64"
    assert flag["--max-model-len"] == str(4096 - 64)  # one block is vLLM's null block
    assert "--enforce-eager" in cmd and "--enable-prefix-caching" in cmd and "--enable-prompt-tokens-details" in cmd
    assert json.loads(flag["--kv-events-config"])["endpoint"] == "tcp://*:18121"
    assert flag["--served-model-name"] == fake_model.name  # stable: the folder's name, not its path
    env = server_env(opts, base={"PATH": "/bin", "KVBENCH_EVICTION": "stale"})
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    cfg = config_from_env(env)
    assert cfg is not None and (cfg.name, cfg.seed) == ("rlt", 3)


def test_native_eviction_sets_no_plugin_env(fake_model):
    (opts,), _ = cluster_options(str(fake_model), 1, "vllm", 0, 18120, True, None, None, None, "127.0.0.1", False)
    env = server_env(opts, base={"KVBENCH_EVICTION": "lru", ENV_SEED: "1"})
    assert ENV_NAME not in env and config_from_env(env) is None
    flag = server_command(opts)
    assert flag[flag.index("--block-size") + 1] == "32"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--block-size", "48", "--cpu"], "--block-size 48: must be positive and a multiple of 32 on CPU"),
        (["--kv-cache-tokens", "-1"], "--kv-cache-tokens must be positive"),
        (["--eviction", "nosuch", "--cpu"], "unknown eviction policy 'nosuch'"),
        (["--eviction-param", "novalue", "--cpu"], "--eviction-param 'novalue': expected KEY=VALUE"),
        (["--eviction", "s3fifo", "--eviction-param", "promote_threshold=2x", "--cpu"],
         "--eviction-param promote_threshold=2x: eviction policy 's3fifo' expects an int for 'promote_threshold'"),
        (["--eviction", "lru", "--eviction-param", "colour=red", "--cpu"], "eviction policy 'lru' has no such"),
    ],
)
def test_cluster_up_rejects_bad_flags_in_one_line(fake_model, tmp_path, args, message):
    out = tmp_path / "cluster.json"
    res = CliRunner().invoke(_app(), ["cluster", "up", "--model", str(fake_model), "-o", str(out), *args])
    assert isinstance(res.exception, KvbenchError), res.output
    assert message in str(res.exception) and "\n" not in str(res.exception)
    assert not out.exists()


def test_cluster_up_rejects_a_directory_without_a_model(tmp_path):
    res = CliRunner().invoke(_app(), ["cluster", "up", "--model", str(tmp_path), "--cpu"])
    assert isinstance(res.exception, KvbenchError) and "no config.json" in str(res.exception)


def test_cluster_down_reads_only_cluster_files(tmp_path):
    with pytest.raises(KvbenchError, match="no such cluster file"):
        read_cluster(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KvbenchError, match="not valid JSON"):
        read_cluster(bad)


def test_eviction_params_are_typed_like_the_simulator_types_them(fake_model):
    # json.loads("False") fails and left the string "False", and bool("False") is True: the real cluster ran
    # mark_inserts=True while the simulator ran False for the same flag
    from kvbench.cache import make_policy
    from kvbench.http.cluster import _eviction_params

    params = _eviction_params("rlt", ["mark_inserts=False"])
    assert params == {"mark_inserts": False}
    (opts,), _ = cluster_options(str(fake_model), 1, "rlt", 0, 18120, True, None, None, None, "127.0.0.1", False,
                                 params)
    cfg = config_from_env(server_env(opts, base={}))
    assert cfg.params == {"mark_inserts": False}
    assert make_policy(cfg.name, seed=cfg.seed, **cfg.params).mark_inserts is False  # what the plugin builds


# prints its child's pid once the child runs, so the test waits for that event instead of sleeping
FAKE_SERVER = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
               "time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)")


def test_stop_kills_the_whole_process_group():
    # a parent that starts a child in its own session: both must go. Its command line looks like a worker's.
    proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, "-m", "vllm.entrypoints.openai.api_server",
                             "--port", "18177"], start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())  # the child exists: stopping the group must take it too
    proc.stdout.close()
    skipped = []
    # the recorded port must match: a vLLM server on another port is someone else's
    assert stop_cluster({"workers": [{"pid": proc.pid, "port": 18179}]}, on_skip=lambda *a: skipped.append(a)) == []
    assert skipped == [(proc.pid, 18179)] and proc.poll() is None
    assert stop_cluster({"workers": [{"pid": proc.pid, "port": 18177}]}) == [proc.pid]
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert stop_pid(proc.pid) is False  # already gone


@pytest.mark.parametrize("own_session", [True, False])
def test_cluster_down_leaves_a_process_that_is_not_ours_alone(tmp_path, own_session):
    # a stale cluster.json whose pid now belongs to something else: a process that exits 0 when its stdin
    # closes. Any signal `cluster down` sent is seen before that end of file (a terminating one makes the exit
    # code non-zero), so no sleep is needed to give a wrongly sent signal time to act.
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                               start_new_session=own_session)
    try:
        cluster = tmp_path / "cluster.json"
        cluster.write_text(json.dumps({"workers": [{"pid": sleeper.pid, "port": 18178,
                                                    "url": "http://127.0.0.1:18178"}]}))
        res = CliRunner().invoke(_app(), ["cluster", "down", str(cluster)])
        assert res.exit_code == 0, res.output
        assert "stopped 0 worker(s)" in res.output and "not running / not ours" in res.output
        assert sleeper.poll() is None, "cluster down killed a process it did not start"
        sleeper.stdin.close()
        assert sleeper.wait(60) == 0, "cluster down signalled a process it did not start"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_log_tail_finds_the_root_cause(tmp_path):
    log = tmp_path / "w.log"
    log.write_text(
        "(APIServer pid=1) INFO 11-25 16:37:00 [api.py:1] starting\n"
        "(EngineCore pid=2) ERROR 11-25 16:37:17 [core.py:1510] ValueError: max seq len 2048 too large\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    assert log_tail(log) == "ValueError: max seq len 2048 too large"


@pytest.mark.vllm
def test_cluster_up_and_down_with_a_real_worker(tiny_model, tmp_path):
    out = tmp_path / "cluster.json"
    res = CliRunner().invoke(_app(), ["cluster", "up", "--model", str(tiny_model), "--workers", "1", "--cpu",
                                      "--eviction", "rlt", "--seed", "7", "--kv-cache-tokens", "1024",
                                      "--eviction-param", "mark_inserts=False",
                                      "--block-size", "32", "--base-port", "18160", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    try:
        (w,) = data["workers"]
        assert data["endpoints"] == [w["url"]] == ["http://127.0.0.1:18160"]
        assert (data["eviction"], data["seed"], data["block_size"]) == ("rlt", 7, 32)
        assert (data["kv_cache_tokens"], data["kv_cache_blocks"], data["usable_blocks"]) == (1024, 32, 31)
        assert "kvbench eviction policy 'rlt' (seed 7, params {'mark_inserts': False})" in Path(w["log"]).read_text()
        print(f"worker start-up: {w['startup_s']} s")
        # the same port again: refused before anything starts
        res2 = CliRunner().invoke(_app(), ["cluster", "up", "--model", str(tiny_model), "--workers", "1", "--cpu",
                                           "--base-port", "18160", "-o", str(tmp_path / "c2.json")])
        assert isinstance(res2.exception, KvbenchError) and "port 18160 is already in use" in str(res2.exception)
    finally:
        res = CliRunner().invoke(_app(), ["cluster", "down", str(out)])
    assert res.exit_code == 0 and "stopped 1 worker" in res.output
    with pytest.raises(ProcessLookupError):
        os.killpg(w["pid"], 0)


@pytest.mark.vllm
def test_a_worker_that_cannot_start_is_reported_in_one_line(tiny_model, tmp_path):
    opts = WorkerOptions(model=str(tiny_model), port=18161, block_size=32, kv_cache_tokens=1024,
                         max_model_len=4096, cpu=True)  # longer than the KV cache: vLLM refuses
    from kvbench.http.cluster import start_workers

    with pytest.raises(KvbenchError) as err:
        start_workers([opts], tmp_path / "logs", timeout=300, progress=False)
    msg = str(err.value)
    assert "port 18161 exited" in msg and "ValueError" in msg and "worker-18161.log" in msg
