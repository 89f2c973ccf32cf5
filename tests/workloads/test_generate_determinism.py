"""Same arguments and seed: byte-identical Parquet; another seed: another trace (every generator)."""

import pytest


def _gen(cli, out, fixtures, case, seed):
    args = {
        "docqa-file": (
            "generate",
            "docqa",
            "--dataset",
            "quality",
            "--input",
            fixtures["quality"],
            "--requests",
            "30",
            "--window",
            "10",
        ),
        "docqa-synthetic": ("generate", "docqa", "--dataset", "loogle", "--synthetic", "--documents", "5"),
        "conversation-file": (
            "generate",
            "conversation",
            "--dataset",
            "sharegpt",
            "--input",
            fixtures["sharegpt"],
            "--conversations",
            "4",
            "--user-turn-tokens",
            "40",
        ),
        "conversation-synthetic": (
            "generate",
            "conversation",
            "--dataset",
            "ultrachat",
            "--synthetic",
            "--conversations",
            "4",
            "--user-turn-tokens",
            "40",
            "--arrival",
            "gamma",
            "--burstiness",
            "0.5",
        ),
        "trace-bailian": ("generate", "trace", "--format", "bailian", "--input", fixtures["bailian"]),
    }[case]
    r = cli(*args, "--seed", seed, "-o", out)
    assert r.code == 0, r.message


@pytest.mark.parametrize(
    "case", ["docqa-file", "docqa-synthetic", "conversation-file", "conversation-synthetic", "trace-bailian"]
)
def test_byte_identical(cli, tmp_path, quality_file, sharegpt_file, bailian_jsonl, case):
    fixtures = {"quality": quality_file, "sharegpt": sharegpt_file, "bailian": bailian_jsonl}
    a, b, c = (tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet"))
    _gen(cli, a, fixtures, case, "5")
    _gen(cli, b, fixtures, case, "5")
    _gen(cli, c, fixtures, case, "6")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
