"""The dataset builder on a real index: provenance, the leakage guard, the filters, the CLI contract, cancel, training."""

import json
import threading

import pytest

from backends.core.config import load_settings
from backends.core.errors import BadInput
from backends.core.types import Source
from backends.knowledge.index import DocumentIndex
from backends.learning import datasets
from backends.learning.datasets import (NEAR_DUPLICATE, DatasetCancelled, DatasetOptions, build_dataset, plan_build,
                                        save_dataset)
from backends.learning.examples import read_qa_file, read_training_file
from backends.learning.facts import Fact, facts_of
from tests.helpers import copy_demo_store, run_cli

SMALL = ("company-overview-md", "travel-policy-pdf", "product-catalog-csv")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return copy_demo_store(tmp_path_factory.mktemp("datasets") / "store")


@pytest.fixture(scope="module")
def index(store):
    index = DocumentIndex(load_settings(store_dir=store))
    yield index
    index.close()


@pytest.fixture(scope="module")
def built(index, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    dataset = build_dataset(index, DatasetOptions(paraphrases=2, doc_ids=SMALL, eval_share=0.3))
    save_dataset(dataset, out)
    return out, dataset


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def unit(index, texts):
    return datasets._unit_vectors(index, texts)


def test_a_build_writes_the_three_files_with_provenance_that_points_into_the_chunks(index, built):
    out, dataset = built
    manifest = json.loads((out / "dataset.json").read_text())
    train, evaluation = rows(out / "train.jsonl"), rows(out / "eval.jsonl")
    assert manifest["counts"]["train"] == len(train) > 50 and manifest["counts"]["eval"] == len(evaluation) > 5
    assert set(manifest["source_index"]["documents"]) == set(SMALL) and manifest["paraphrases"] == 2
    assert manifest["files"]["train.jsonl"] == datasets._sha((out / "train.jsonl").read_bytes())
    chunks = {c.chunk_id: c for doc in SMALL for c in index.chunks_of(doc)}
    for row in train + evaluation:
        chunk = chunks[row["chunk_id"]]
        start, end = row["evidence"]["start"], row["evidence"]["end"]
        assert 0 <= start < end <= len(chunk.text) and chunk.text[start:end] == row["evidence"]["text"], row
        assert row["source"] == chunk.file_name and row["doc_id"] == chunk.doc_id
    # An eval answer is the evidence itself (whitespace joined), so "gold contained" scores it.
    assert all(" ".join(r["evidence"]["text"].split()) == r["answer"] for r in evaluation)
    # Both files feed `train --data` and `eval --set` unchanged.
    assert len(read_training_file(out / "train.jsonl")) == len(train)
    assert all(item.source for item in read_qa_file(out / "eval.jsonl"))


def test_no_eval_question_is_a_training_question_or_a_near_duplicate_of_one(index, built):
    out, _ = built
    train = [r["question"] for r in rows(out / "train.jsonl")]
    evaluation = [r for r in rows(out / "eval.jsonl")]
    assert not {q.lower() for q in train} & {r["question"].lower() for r in evaluation}
    similarity = unit(index, [r["question"] for r in evaluation]) @ unit(index, train).T
    assert similarity.max() < NEAR_DUPLICATE
    # ...and every eval question asks for a fact training teaches (its chunk and answer are trained on).
    taught = {(r["chunk_id"], r["evidence"]["start"]) for r in rows(out / "train.jsonl")}
    assert all((r["chunk_id"], r["evidence"]["start"]) in taught for r in evaluation)


def test_questions_of_different_facts_are_never_near_duplicates(index, built):
    out, dataset = built
    train = rows(out / "train.jsonl")
    vectors = unit(index, [r["question"] for r in train])
    facts = [(r["chunk_id"], r["evidence"]["start"]) for r in train]
    similarity = vectors @ vectors.T
    for i in range(len(train)):
        for j in range(i):
            if facts[i] != facts[j]:
                assert similarity[i, j] < NEAR_DUPLICATE, (train[i]["question"], train[j]["question"])
    assert dataset.manifest["filters"]["near_duplicate"] > 0


def test_duplicate_documents_and_unanswerable_facts_are_dropped_and_counted(tmp_path):
    index = DocumentIndex(load_settings(store_dir=tmp_path / "store"))
    try:
        fact = "The Kestrel valve service costs 120 euros and takes 3 working days at the Corrin Bay workshop."
        for name in ("valves.txt", "valves-copy.txt"):  # the same facts twice: their questions are duplicates
            index.ingest_bytes(name, f"{fact}\nValves are tested by Mira Holt before shipping.\n{name}".encode())
        dataset = build_dataset(index, DatasetOptions(paraphrases=1, eval_share=0))
        assert dataset.manifest["filters"]["near_duplicate"] > 0
        questions = [r["question"] for r in dataset.train]
        assert len(questions) == len(set(questions))
        chunk = index.chunks_of("valves-txt")[0]
        # A fact whose offsets do not hold its answer is unanswerable; so is a held-out question whose chunk
        # retrieval cannot find (training needs no retrieval, so it keeps its wordings).
        lost = Source("not-in-the-index", "gone", "gone.txt", "", chunk.text, 1.0)
        facts = facts_of(chunk)[:1]
        assert facts, "the sentence states facts"
        moved = Fact(chunk, facts[0].sentence, facts[0].answer, facts[0].start + 1, facts[0].end + 1, facts[0].kind,
                     facts[0].questions[:1], facts[0].answers)
        orphan = Fact(lost, facts[0].sentence, facts[0].answer, facts[0].start, facts[0].end, facts[0].kind,
                      facts[0].questions[:1], facts[0].answers)
        removed = {"unanswerable": 0}
        vectors = unit(index, [facts[0].questions[0]])
        kept = datasets._holding([(f, [(f.questions[0], vectors[0])]) for f in (facts[0], moved)], removed)
        assert [f for f, _ in kept] == [facts[0]] and removed["unanswerable"] == 1
        work = datasets._Work(datasets.Plan([], {}, 0), threading.Event(), lambda p: None)
        asked = [(f, (f.questions[0], vectors[0])) for f in (facts[0], orphan)]
        held = datasets._round_trip(index, asked, removed, work)
        assert [f for f, _ in held] == [facts[0]] and removed["unanswerable"] == 2
    finally:
        index.close()


def test_a_document_without_facts_is_reported_not_an_error(tmp_path):
    index = DocumentIndex(load_settings(store_dir=tmp_path / "store"))
    try:
        index.ingest_bytes("notes.txt", b"Hello\nThanks\n")
        index.ingest_bytes("facts.txt", b"The harbour office opens at 08:30 and closes at 17:00 on weekdays.\n")
        dataset = build_dataset(index, DatasetOptions(paraphrases=0, eval_share=0))
        assert dataset.manifest["documents_without_facts"] == ["notes-txt"] and dataset.train
    finally:
        index.close()


def test_bad_options_and_an_empty_index_exit_2_with_the_reason(tmp_path):
    settings = load_settings(store_dir=tmp_path / "empty")
    cases = {("--paraphrases", "11"): "between 0 and 10", ("--eval-share", "1.5"): "eval-share",
             ("--format", "xml"): "invalid choice", (): "index is empty", ("--docs", "x"): "index is empty"}
    for extra, reason in cases.items():
        result = run_cli("dataset", "build", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "empty"), *extra,
                         settings=settings)
        assert result.returncode == 2 and reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            (extra, result.stderr)
    assert not (tmp_path / "out").exists()


def test_the_cli_builds_prints_the_counts_and_its_files_feed_train_and_eval(tmp_path):
    store = copy_demo_store(tmp_path / "store")
    settings = load_settings(store_dir=store)
    result = run_cli("dataset", "build", "--out", str(tmp_path / "ds"), "--store", str(store), "--docs",
                     "company-overview-md", "travel-policy-pdf", "--paraphrases", "1", "--seed", "3", "--json",
                     settings=settings)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["documents"] == 2 and summary["counts"]["train"] > 10 and summary["paraphrases"] == 1
    assert "ETA" in result.stderr and "chunks (about" in result.stderr
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert manifest["seed"] == 3 and manifest["id"] == summary["id"]
    from backends.learning.training import dataset_label, dataset_record

    trained_on = dataset_record(tmp_path / "ds" / "train.jsonl", summary["counts"]["train"])
    assert f"dataset {summary['id']}" in dataset_label(trained_on), "the adapters table names the id the build printed"
    no_adapters = tmp_path / "no-adapters"  # a RAG-only evaluation needs no adapter in the store
    result = run_cli("eval", "--set", str(tmp_path / "ds" / "eval.jsonl"), "--systems", "rag", "--limit", "3",
                     "--store", str(store), "--out", str(tmp_path / "run"), settings=settings,
                     env={"DUET_ADAPTERS_DIR": str(no_adapters), "DUET_LLM_API_KEY": "sk-duet-test-secret-4711"})
    assert result.returncode == 0, result.stderr
    # A server's API key is never written: not in any file the run wrote, nor in the store's log.
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()] + list((store / "logs").glob("*"))
    assert written and not [p for p in written if b"sk-duet-test-secret-4711" in p.read_bytes()]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["llm_api_key"] == "set"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metrics"]["rag"]["recall_at_k"] is not None, "eval rows carry their source"
    assert metrics["adapter"] == "" and metrics["config"]["active_adapter"] == ""


def test_a_cancelled_build_leaves_nothing_behind(index, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if len(seen) == 20:
            cancel.set()

    with pytest.raises(DatasetCancelled):
        save_dataset(build_dataset(index, DatasetOptions(paraphrases=0, doc_ids=SMALL), progress, cancel),
                     tmp_path / "out")
    assert not list(tmp_path.iterdir())
    assert all(p.done <= p.total and p.eta_s >= 0 for p in seen)


def test_a_save_that_fails_midway_keeps_the_previous_dataset(built, tmp_path, monkeypatch):
    out, dataset = built
    target = tmp_path / "ds"
    save_dataset(dataset, target)
    before = {name: (target / name).read_bytes() for name in datasets.FILES}

    def crash(name):
        if name == "dataset-save":
            raise OSError("disk full")

    monkeypatch.setattr(datasets, "pause_point", crash)
    with pytest.raises(OSError):
        save_dataset(datasets.Dataset(dataset.train[:3], dataset.eval[:1], dataset.manifest), target)
    assert {name: (target / name).read_bytes() for name in datasets.FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_the_plan_counts_chunks_before_a_build_and_refuses_unknown_documents(index):
    plan = plan_build(index, DatasetOptions(doc_ids=SMALL))
    assert len(plan.chunks) == sum(len(index.chunks_of(d)) for d in SMALL) and plan.estimate_s > 0
    with pytest.raises(BadInput, match="docs list"):
        plan_build(index, DatasetOptions(doc_ids=("nope",)))


def test_raft_and_text_formats(index):
    raft = build_dataset(index, DatasetOptions(paraphrases=0, format="raft", doc_ids=SMALL[:1], eval_share=0))
    with_gold = [r for r in raft.train if r["gold_in_context"]]
    assert 0 < len(with_gold) < len(raft.train) and all(len(r["context"]) >= 2 for r in raft.train)
    gold = {c.chunk_id: c.text for c in index.chunks_of(SMALL[0])}
    assert all(any(c["text"] == gold[r["chunk_id"]] for c in r["context"]) == r["gold_in_context"] for r in raft.train)
    assert all(r["answer"].startswith("Quote: ") and r["evidence"]["text"] in r["answer"] for r in raft.train)
    text = build_dataset(index, DatasetOptions(paraphrases=1, format="text", doc_ids=SMALL[:1], eval_share=0))
    assert {r["chunk_id"] for r in text.train} <= set(gold) and all(r["text"] for r in text.train)
    assert len(text.train) == 2 * len({r["chunk_id"] for r in text.train})


def test_training_takes_every_format_and_the_adapter_records_its_dataset(index, built, tmp_path):
    from backends.learning.training import TrainConfig, train_adapter

    out, _ = built
    settings = load_settings(store_dir=index.settings.store_dir, adapters_dir=tmp_path / "adapters")
    path = train_adapter(settings, out / "train.jsonl", "from-docs", TrainConfig(max_steps=1, batch_size=2))
    record = json.loads((path / "metadata.json").read_text())["dataset"]
    assert record["manifest_sha256"] == datasets._sha((out / "dataset.json").read_bytes())
    assert record["id"] == json.loads((out / "dataset.json").read_text())["id"] and record["paraphrases"] == 2
    for form in ("raft", "text"):
        folder = save_dataset(build_dataset(index, DatasetOptions(paraphrases=0, format=form, doc_ids=SMALL[:1])),
                              tmp_path / form)
        trained = train_adapter(settings, folder / "train.jsonl", form, TrainConfig(max_steps=1, batch_size=2))
        assert json.loads((trained / "metadata.json").read_text())["dataset"]["format"] == form


def test_a_model_rewording_is_kept_only_if_it_keeps_the_terms_and_hides_the_answer():
    chunk = Source("c", "d", "overview.md", "", "Brackwater employs 212 people in Port Aldren.", 1.0)
    fact = Fact(chunk, chunk.text, "212 people", 19, 29, "quantity", ["How many people does Brackwater employ in Port Aldren?"])
    assert datasets._fair_rewording(fact, "What is the headcount of Brackwater in Port Aldren?")
    assert not datasets._fair_rewording(fact, "What is the headcount of the company?")  # names dropped
    assert not datasets._fair_rewording(fact, "Does Brackwater in Port Aldren employ 212 people?")  # answer given
    assert not datasets._fair_rewording(fact, "Brackwater Port Aldren")  # not a question


def test_model_wordings_run_through_the_shared_decoder(duet, index):
    dataset = build_dataset(index, DatasetOptions(paraphrases=1, doc_ids=SMALL[:1], eval_share=0), llm=duet.llm)
    assert dataset.manifest["method"] == f"templates + {duet.llm.name}"
    assert 0 <= dataset.manifest["model_wordings"] <= dataset.manifest["counts"]["facts"] and dataset.train
