"""The benchmark command runs and reports every figure (a smoke test: no timing is asserted)."""

import dataclasses
import json

from backends.core.config import DATA_DIR
from tests.helpers import run_cli

FIGURES = ["decode_tokens_per_s.onnxruntime.base", "decode_tokens_per_s.onnxruntime.adapter",
           "first_token_s.onnxruntime.base", "first_token_s.onnxruntime.adapter",
           "answer.rag.first_token_s", "answer.ft.tokens_per_s", "side_by_side.ratio", "side_by_side.both_vs_sum",
           "side_by_side.rag.done_s", "side_by_side.ft.done_s", "retrieval_ms.1000",
           "ingest.chunks_per_s", "embedding.chunks_per_s", "ingest.overhead", "cold_start_s",
           "peak_memory_mb.bench_process", "train.tokens_per_s", "train.limit_tokens_per_s",
           "train.tokens_per_s.defaults", "dataset.chunks_per_s", "dataset.pairs_per_s",
           "eval.questions_per_min.rag", "eval.questions_per_min.ft", "eval.wall_vs_sum",
           "sessions.1.time_to_both_s", "sessions.2.time_to_both_s", "sessions.p95_vs_one"]


def test_quick_bench_prints_every_figure_as_json(settings, tmp_path):
    with_demo_adapter = dataclasses.replace(settings, adapters_dir=DATA_DIR / "adapters")
    done = run_cli("bench", "--quick", "--json", "--store", str(tmp_path / "store"), settings=with_demo_adapter, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for name in FIGURES:
        figure = result["figures"][name]
        assert figure["runs"] >= 1 and figure["min"] <= figure["median"] <= figure["max"], name
        assert figure["median"] > 0, name
    assert result["engine"] == "onnxruntime"  # the default for the bundled GGUF on a CPU
    assert result["figures"]["side_by_side.both_vs_sum"]["target"] == "<= 1.1"
    assert ("decode_tokens_per_s.llama_cpp.base" in result["figures"]) != ("llama_cpp" in result["skipped"])
    llama_compare = "side_by_side.duet_llama_cpp"  # Compare on the llama.cpp engine, beside the default engine's
    assert (f"{llama_compare}.ratio" in result["figures"]) != (llama_compare in result["skipped"])
    assert (llama_compare in result["skipped"]) == ("llama_cpp" in result["skipped"])
    if f"{llama_compare}.ratio" in result["figures"]:
        assert result["figures"][f"{llama_compare}.both_vs_sum"]["target"] == "<= 1.1"
        assert result["figures"][f"{llama_compare}.both_s"]["median"] > 0
    assert result["figures"]["sessions.p95_vs_one"]["meets"] is None  # judged at 8 sessions, not --quick's 2
    assert result["notes"]["train.precision"] in ("fp32", "bf16")
    assert (tmp_path / "store" / "bench" / "latest.json").is_file()
