"""The config models: the library entry point writes what the command line writes, and a bad value is one
line naming the flag (command line and library) or the spec file and key (`kvbench run`)."""

from __future__ import annotations

import pytest

from kvbench import workloads
from kvbench.errors import KvbenchError
from kvbench.trace import read_trace
from kvbench.workloads import ConversationConfig, DocqaConfig, GspConfig, TraceConfig, parse_config

GSP_FLAGS = ("--groups", "4", "--prompts-per-group", "3", "--lengths", "64,128", "--shared-fraction", "0.25",
             "--order", "interleaved", "--rate", "inf", "--seed", "3")


def test_library_writes_the_same_bytes_as_the_command_line(cli, tmp_path):
    via_cli = tmp_path / "cli.parquet"
    assert cli("generate", "gsp", *GSP_FLAGS, "-o", via_cli).code == 0
    config = GspConfig(groups=4, prompts_per_group=3, lengths=[64, 128], shared_fraction=0.25, order="interleaved",
                       rate=float("inf"), seed=3)
    via_lib = workloads.generate("gsp", config, tmp_path / "lib.parquet")
    assert via_lib.read_bytes() == via_cli.read_bytes()
    params = read_trace(via_lib).meta.params
    assert params["lengths"] == "64,128" and params["rate"] == "inf"  # spelled as on the command line


def test_library_and_cli_agree_for_a_synthetic_trace_import(cli, tmp_path):
    via_cli = tmp_path / "cli.parquet"
    args = ("--format", "bailian", "--synthetic", "--requests", "40", "--duration", "20")
    assert cli("generate", "trace", *args, "-o", via_cli).code == 0
    config = TraceConfig(format="bailian", synthetic=True, requests=40, duration=20)
    assert workloads.generate("trace", config, tmp_path / "lib.parquet").read_bytes() == via_cli.read_bytes()


def test_generate_wants_the_kinds_config(tmp_path):
    with pytest.raises(TypeError, match="GspConfig"):
        workloads.generate("gsp", DocqaConfig(dataset="quality", synthetic=True), tmp_path / "x.parquet")
    with pytest.raises(KvbenchError, match="unknown source"):
        workloads.generate("bogus", GspConfig(), tmp_path / "x.parquet")


def test_presets_are_typed_defaults():
    assert GspConfig(preset="sglang").settings().system_tokens == 2048
    assert GspConfig(preset="sglang", lengths=[64]).settings().shared_fraction == 0.5
    assert ConversationConfig(dataset="sharegpt", synthetic=True).chosen_preset() == "rlt"
    assert ConversationConfig(dataset="sharegpt", input="x.json").chosen_preset() == "recorded"


@pytest.mark.parametrize(
    "kind,values,message",
    [
        ("gsp", {"order": "zigzag"}, "--order zigzag: unknown value; choose one of random, grouped, interleaved"),
        ("gsp", {"groups": 0}, "--groups 0: must be >= 1"),
        ("gsp", {"lengths": [64, -5]}, "--lengths 64,-5: values must be >= 1 (got -5)"),
        ("gsp", {"output_tokens": 1 << 30}, "--output-tokens 1073741824: must be <= 16,777,216"),
        ("gsp", {"shared_fraction": 2}, "--shared-fraction 2.0: must be between 0 and 1"),
        ("gsp", {"rate": 0}, "--rate 0.0: must be > 0"),
        ("docqa", {"dataset": "quality", "synthetic": True, "doc_tokens": "9,1"}, "--doc-tokens 9,1: expected MIN,MAX"),
        ("docqa", {"dataset": "quality", "synthetic": True, "zipf_alpha": -1.0}, "--zipf-alpha -1.0: must be >= 0"),
        ("docqa", {"dataset": "quality", "synthetic": True, "input": "x"}, "--input and --synthetic exclude"),
        ("conversation", {"dataset": "sharegpt", "synthetic": True, "think_s": -1.0}, "--think-s -1.0: must be >= 0"),
        ("conversation", {"dataset": "sharegpt", "input": "x", "preset": "recorded", "turns": [2, 4]},
         "--preset recorded keeps each conversation as recorded, so --turns 2,4 conflicts"),
        ("trace", {"format": "mooncake"}, "--input FILE is required"),
        ("trace", {"format": "mooncake", "input": "x", "requests": 5}, "--requests only applies with --synthetic"),
        ("trace", {"format": "azure", "synthetic": True, "flavour": "chat"}, "--flavour chat: unknown value"),
        ("trace", {"format": "mooncake", "synthetic": True, "time_scale": 0}, "--time-scale 0.0: must be a positive"),
        ("gsp", {"grups": 3}, "unknown option --grups"),
        ("docqa", {}, "--dataset is required"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(kind, values, message):
    with pytest.raises(KvbenchError) as info:
        parse_config(kind, values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_spec_values_name_the_file_and_key():
    with pytest.raises(KvbenchError) as info:
        parse_config("gsp", {"groups": "many"}, where="x.toml: [generate]")
    assert str(info.value).startswith("x.toml: [generate] groups: --groups 'many': input should be a valid integer")
    with pytest.raises(KvbenchError, match=r"^x.toml: \[generate\] lengths: --lengths 0: values must be >= 1"):
        parse_config("gsp", {"lengths": [0]}, where="x.toml: [generate]")
    with pytest.raises(KvbenchError, match="^x.toml: \\[generate\\]: kind = 'gspp': unknown source"):
        parse_config("gspp", {}, where="x.toml: [generate]")
