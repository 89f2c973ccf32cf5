"""The plugin inside a real vLLM ``Scheduler`` with real KV connectors, in-process (no model runs).

The scheduler is vLLM's own, built from a ``VllmConfig`` of the tiny test model, with the plugin installed
the way ``register()`` installs it; model steps are replaced by handing ``update_from_output`` one sampled
token per finished prefill. Covers: a request admitted with external (connector) hits announces itself to
the policy exactly once however often the scheduler looked it up, lazy CPU offload is refused at start-up
with one line (eager offload runs, its CPU tier stays vLLM's own pool).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch
from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core import kv_cache_coordinator
from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, get_request_block_hasher, init_none_hash
from vllm.v1.core.sched import scheduler as scheduler_module
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, KVCacheTensor
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from kvbench.errors import KvbenchError
from kvbench.hashing import block_hashes
from kvbench.vllm_plugin import PolicyConfig
from kvbench.vllm_plugin.block_pool import PolicyBlockPool, install

BLOCK = 16
SPEC = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)


@pytest.fixture
def plugin(monkeypatch):
    """``install(config)`` as register() does it, undone after the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(kv_cache_coordinator, "BlockPool", kv_cache_coordinator.BlockPool)
    monkeypatch.setattr(scheduler_module, "KVCacheManager", scheduler_module.KVCacheManager)
    monkeypatch.setattr(scheduler_module, "KVConnectorFactory", scheduler_module.KVConnectorFactory)
    monkeypatch.setattr(PolicyBlockPool, "config", None)
    return install


def make_scheduler(model, transfer: dict, num_blocks: int):
    model_config = ModelConfig(model=str(model), max_model_len=1024, dtype="float32", skip_tokenizer_init=True)
    config = VllmConfig(
        model_config=model_config,
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=1024,
                                         is_encoder_decoder=False),
        kv_transfer_config=KVTransferConfig(kv_role="kv_both", **transfer),
        device_config=DeviceConfig("cpu"),
    )
    config.cache_config.num_gpu_blocks = num_blocks
    page = SPEC.page_size_bytes
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[KVCacheTensor(size=num_blocks * page, layers=["l0"], layer_stride=0, block_stride=page)],
        kv_cache_groups=[KVCacheGroupSpec(["l0"], SPEC)],
    )
    return scheduler_module.Scheduler(vllm_config=config, kv_cache_config=kv_cache_config,
                                      structured_output_manager=StructuredOutputManager(config),
                                      block_size=BLOCK, log_stats=False)


def step(sched) -> dict[str, int]:
    """One engine step: schedule, then one sampled token for every request whose prefill is done.
    Returns the tokens scheduled per request."""
    out = sched.schedule()
    ids = list(out.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        req = sched.requests[rid]
        done = req.num_computed_tokens + out.num_scheduled_tokens[rid] >= req.num_tokens
        sampled.append([7] if done else [])
    sched.update_from_output(out, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                    sampled_token_ids=sampled))
    return out.num_scheduled_tokens


# --- the KV-connector path -------------------------------------------------------------------------
def test_request_with_external_hits_is_announced_once_however_often_it_is_looked_up(plugin, tiny_model, tmp_path):
    plugin(PolicyConfig("rlt"))
    sched = make_scheduler(tiny_model, {"kv_connector": "ExampleConnector",
                                        "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)}},
                           num_blocks=11)
    pool = sched.kv_cache_manager.block_pool
    events: list[tuple[str, object]] = []
    for name in ("on_request", "on_insert", "on_access"):
        real = getattr(pool.policy, name)
        setattr(pool.policy, name, lambda *a, _real=real, _name=name: (events.append((_name, a)), _real(*a))[1])
    init_none_hash(sha256)
    hasher = get_request_block_hasher(BLOCK, sha256)

    def request(rid: str, ids: list[int], max_tokens: int) -> Request:
        return Request(rid, ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True), None, block_hasher=hasher)

    # The ExampleConnector reports an external hit for a prompt whose folder exists: B's first 80 tokens.
    b_ids = list(range(1000, 1000 + 5 * BLOCK + 3))
    sched.connector._generate_foldername_debug(torch.tensor(b_ids[:5 * BLOCK]), [], create_folder=True)
    # A holds 6, then 7, of the 10 blocks for 4 steps; its decode fills (and caches) its 6th block meanwhile
    a = request("A", list(range(1, 1 + 6 * BLOCK - 2)), max_tokens=4)
    sched.add_request(a)
    step(sched)
    b = request("B", b_ids, max_tokens=1)  # needs 6 blocks: waits, looked up again every step
    sched.add_request(b)
    waited, b_computed = 0, []
    while sched.requests:
        scheduled = step(sched)
        waited += b.status == RequestStatus.WAITING
        b_computed += [scheduled["B"]] if "B" in scheduled else []
    assert waited >= 2  # B was looked up (get_num_new_matched_tokens, allocate_slots failing) 3 times or more
    assert b_computed == [3]  # B's other 80 tokens came from the connector (nothing local to hit)
    names = [e[0] for e in events]
    assert names.count("on_request") == 2  # A once, B once
    # B is announced when it is admitted (not at a lookup that failed to allocate): what follows its
    # on_request is its own 5 inserts (the connector's blocks), after everything A did
    b_start = names.index("on_request", 1)
    b_keys = block_hashes(b_ids, BLOCK).tolist()
    assert events[b_start + 1:] == [("on_insert", (k, p)) for k, p in zip(b_keys, [None, *b_keys[:-1]])]
    assert names[:b_start] == ["on_request"] + ["on_insert"] * 6  # A: 5 blocks at prefill, 1 in decode
    # 9 cached blocks left free (B's 5 and the 4 of A's 6 that B's allocation did not evict), all the policy's
    assert pool.policy.evictable_count() == pool.free_block_queue.num_free_cached_blocks == 9


# --- CPU offload -----------------------------------------------------------------------------------
def offload(lazy: bool) -> dict:
    return {"kv_connector": "SimpleCPUOffloadConnector",
            "kv_connector_extra_config": {"cpu_bytes_to_use": 64 * SPEC.page_size_bytes, "lazy_offload": lazy}}


def nested(transfer: dict) -> dict:
    child = {"kv_role": "kv_both", **transfer}
    return {"kv_connector": "MultiConnector", "kv_connector_extra_config": {"connectors": [child]}}


@pytest.mark.parametrize("wrap", [lambda t: t, nested], ids=["direct", "in-multiconnector"])
def test_lazy_cpu_offload_is_refused_at_start_up_with_one_line(plugin, tiny_model, wrap):
    make_scheduler(tiny_model, wrap(offload(lazy=True)), num_blocks=11)  # plain vLLM runs it
    plugin(PolicyConfig("rlt"))
    with pytest.raises(KvbenchError) as err:
        make_scheduler(tiny_model, wrap(offload(lazy=True)), num_blocks=11)
    message = str(err.value)
    assert "lazy_offload" in message and "'rlt'" in message and "KVBENCH_EVICTION" in message
    assert "\n" not in message


def test_eager_cpu_offload_runs_and_its_cpu_tier_stays_vllms_own_pool(plugin, tiny_model):
    plugin(PolicyConfig("rlt"))
    sched = make_scheduler(tiny_model, offload(lazy=False), num_blocks=11)
    gpu = sched.kv_cache_manager.block_pool
    assert gpu.policy is not None
    cpu = sched.connector.scheduler_manager.cpu_block_pool
    # the CPU tier is built through the same (patched) coordinator, but only the scheduler's pool runs
    # the policy: the tier's blocks are hashed by the connector directly, which the policy would not see
    assert getattr(cpu, "policy", None) is None
    assert type(cpu.free_block_queue) is FreeKVCacheBlockQueue
    with pytest.raises(RuntimeError, match="iter_blocks_after"):
        gpu.free_block_queue.iter_blocks_after(None)
