"""The public CLI contract, driven as a reviewer would: subprocesses, stdout, stderr, exit codes."""

import json
import shutil

from tests.helpers import run_cli


def test_ingest_reports_each_file_and_exits_2_when_one_is_rejected(tmp_path, settings):
    good, bad = tmp_path / "notes.md", tmp_path / "broken.pdf"
    good.write_text("# Notes\nThe gate code is 4471.")
    bad.write_bytes(b"%PDF-1.4 cut short")
    store = str(tmp_path / "store")
    result = run_cli("ingest", str(good), str(bad), "--store", store, settings=settings)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{good}: added 1 chunks"
    assert lines[1].startswith(f"{bad}: rejected: the PDF is damaged")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == "duet: 1 of 2 files rejected"
    again = run_cli("ingest", str(good), "--store", store, settings=settings)
    assert again.returncode == 0 and again.stdout.strip() == f"{good}: skipped (duplicate)"
    listed = run_cli("docs", "list", "--store", store, settings=settings)
    assert listed.returncode == 0 and listed.stdout.startswith("notes-md\tnotes.md\t1 chunks")
    missing = run_cli("docs", "delete", "nope", "--store", store, settings=settings)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no document with id 'nope'" in missing.stderr


def test_ask_both_json(duet, tiny_adapter, settings, tmp_path):
    # A copy: this test process holds the session store, and a store serves one process at a time.
    store = shutil.copytree(settings.store_dir, tmp_path / "store", ignore=shutil.ignore_patterns(".store.lock"))
    result = run_cli("ask", "Who is the Bosun?", "--backend", "both", "--adapter", "tiny", "--json",
                     "--store", str(store), settings=settings)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"rag", "ft"}
    fields = {"backend", "question", "text", "sources", "timings", "tokens_in", "tokens_out", "tokens_per_s", "model", "adapter",
              "abstained"}
    assert set(payload["rag"]) == fields == set(payload["ft"])
    assert payload["rag"]["sources"] and payload["ft"]["sources"] == [] and payload["ft"]["adapter"] == "tiny"
    assert set(payload["rag"]["timings"]) == {"embed", "retrieve", "prompt", "first_token", "generate", "total"}


def test_bad_input_exits_2_with_one_line(settings, tmp_path):
    for args in (["ask", "   ", "--backend", "rag"], ["ask", "q", "--backend", "nope"], ["train", "--data", "missing.jsonl", "--name", "x"]):
        result = run_cli(*args, "--store", str(tmp_path / "s"), settings=settings)
        assert result.returncode == 2, args
        assert result.stderr.startswith("duet: ") and result.stderr.count("\n") == 1, result.stderr


def test_eval_of_the_fine_tuned_side_without_its_adapter_exits_2_before_answering(settings, tmp_path):
    """A missing adapter is the run's bad input (one line, exit 2), not a run of failed rows."""
    from tests.helpers import copy_demo_store

    store = copy_demo_store(tmp_path / "store")
    result = run_cli("eval", "--set", "data/qa/eval.jsonl", "--systems", "rag,ft", "--store", str(store),
                     "--out", str(tmp_path / "run"), settings=settings, env={"DUET_ADAPTERS_DIR": str(tmp_path / "none")})
    assert result.returncode == 2 and "no adapter named 'demo'" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists() and "[1/" not in result.stderr, "nothing was answered"


def test_adapter_export_writes_a_gguf_lora_and_never_overwrites_unasked(settings, tiny_adapter, tmp_path):
    store = ("--store", str(tmp_path / "store"))
    done = run_cli("adapter", "export", str(tmp_path), "--name", "tiny", "--format", "gguf", "--json", *store,
                   settings=settings)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    path = tmp_path / "tiny.gguf"
    assert written == {"name": "tiny", "format": "gguf", "path": str(path), "bytes": path.stat().st_size}
    assert path.read_bytes()[:4] == b"GGUF"
    before = path.stat().st_mtime_ns
    again = run_cli("adapter", "export", str(path), "--name", "tiny", *store, settings=settings)
    assert again.returncode == 2 and "--overwrite" in again.stderr and path.stat().st_mtime_ns == before
    missing = run_cli("adapter", "export", str(tmp_path), "--name", "nope", *store, settings=settings)
    assert missing.returncode == 2 and "no adapter named 'nope'" in missing.stderr
