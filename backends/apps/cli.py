"""The command line, `python -m backends ...` (a public contract: see docs/ARCHITECTURE.md).

Exit codes: 0 on success, 2 on bad input with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends.core.config import DATA_DIR, load_settings
from backends.core.errors import BadInput, DuetError, LoadFailed


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _duet(args, warm: tuple[str, ...] | None = None):
    """The store's Duet; with `warm`, those parts are built (and the libraries imported) on this thread first."""
    from backends.service import get_duet

    duet = get_duet(load_settings(store_dir=getattr(args, "store", None)), _progress)
    return duet.warm(warm) if warm is not None else duet


def cmd_ingest(args) -> int:
    from backends.knowledge.index import expand_paths

    index = _duet(args).index
    results = []
    for path in expand_paths(args.paths):
        result = index.ingest_file(path)
        results.append(result)
        print(f"{path}: {result.describe()}", flush=True)
    rejected = [r for r in results if r.status == "rejected"]
    if rejected or not results:
        print(f"duet: {len(rejected)} of {len(results)} files rejected" if results else "duet: no files found", file=sys.stderr)
        return 2
    return 0


def cmd_docs(args) -> int:
    index = _duet(args).index
    if args.action == "delete":
        if not args.doc_id:
            raise_bad("docs delete needs a DOC_ID (see `docs list`)")
        record = index.delete(args.doc_id)
        print(f"deleted {record.doc_id} ({record.name}, {record.chunks} chunks)")
        return 0
    documents = index.documents()
    if args.json:
        print(json.dumps([d.__dict__ for d in documents], indent=2))
        return 0
    if not documents:
        print("no documents; add some with `python -m backends ingest PATH`")
    for d in documents:
        print(f"{d.doc_id}\t{d.name}\t{d.chunks} chunks\t{d.added_at}")
    return 0


def cmd_ask(args) -> int:
    from backends.answering.prompts import check_question

    from backends.service import parts_for

    check_question(args.question, load_settings())  # before any model loads
    names = ["rag", "ft"] if args.backend == "both" else [args.backend]
    duet = _duet(args, warm=parts_for(names))
    answers = {}
    for name in names:
        stream = duet.stream(name, args.question, args.adapter)
        if not args.json:
            print(f"── {name.upper()} ──", flush=True)
        for item in stream:
            if isinstance(item, str):
                if not args.json:
                    print(item, end="", flush=True)
            else:
                answers[name] = item
        if not args.json:
            _print_answer_footer(answers[name])
    if args.json:
        payload = answers[names[0]].to_dict() if len(names) == 1 else {n: a.to_dict() for n, a in answers.items()}
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    return 0


def _print_answer_footer(answer) -> None:
    from backends.apps.labels import latency_line

    print(f"\n[{answer.model}{' + ' + answer.adapter if answer.adapter else ''}] {latency_line(answer)}")
    for number, source in enumerate(answer.sources, 1):
        print(f"  [{number}] {source.file_name} {source.location} (score {source.score:.2f})")


def cmd_train(args) -> int:
    from dataclasses import fields

    from backends.learning.adapters import check_adapter_name
    from backends.learning.examples import read_training_file
    from backends.learning.training import TrainConfig, train_adapter

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if "target_modules" in values:
        values["target_modules"] = tuple(m.strip() for m in values["target_modules"].split(",") if m.strip())
    config = TrainConfig(**values)
    config.check()
    check_adapter_name(args.name)
    read_training_file(args.data)  # every line validated before any model loads
    duet = _duet(args)
    path = train_adapter(duet.settings, args.data, args.name, config, on_progress=_progress_bar,
                         index_snapshot=duet.index.snapshot(), overwrite=args.overwrite)
    metadata = json.loads((path / "metadata.json").read_text())
    print(f"\nsaved adapter {args.name!r} to {path}: {metadata['dataset']['examples']} examples, "
          f"final loss {metadata['final_loss']:.4f}, {metadata['training_seconds']:.0f} s")
    return 0


def _progress_bar(p) -> None:
    filled = int(30 * p.step / p.total_steps)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] step {p.step}/{p.total_steps} epoch {p.epoch:.2f} "
          f"loss {p.loss:.4f} {p.tokens_per_s:.0f} tok/s ETA {p.eta_s:.0f}s ", end="", file=sys.stderr, flush=True)


def cmd_dataset(args) -> int:
    """Build train.jsonl, eval.jsonl and dataset.json from the indexed documents."""
    from backends.learning.datasets import DatasetOptions, build_dataset, plan_build, save_dataset, uses_model
    from backends.learning.exports import EXPORTS, export_dataset

    options = DatasetOptions(paraphrases=args.paraphrases, format=args.format, eval_share=args.eval_share,
                             seed=args.seed, doc_ids=tuple(args.docs or ()))
    options.check()  # before any model loads
    exports = tuple(f.strip() for f in (args.export or "").split(",") if f.strip())
    if [f for f in exports if f not in EXPORTS] or (exports and args.format == "text"):
        raise_bad(f"--export takes {' and/or '.join(EXPORTS)}, for a qa or raft dataset "
                  "(for example --export alpaca,sharegpt)")
    duet = _duet(args)
    plan = plan_build(duet.index, options)
    _progress(f"building from {len(plan.documents)} documents, {len(plan.chunks)} chunks "
              f"(about {plan.estimate_s:.0f} s on 2 cores)")
    llm = duet.llm if uses_model(duet.settings) else None
    dataset = build_dataset(duet.index, options, on_progress=_build_progress, llm=llm)
    out = save_dataset(dataset, args.out)
    exported = [str(path) for path in export_dataset(out, exports)] if exports else []
    manifest = dataset.manifest
    print(file=sys.stderr)
    if args.json:
        print(json.dumps({"out": str(out), **{k: manifest[k] for k in (
            "id", "format", "paraphrases", "counts", "filters", "documents_without_facts", "seconds")},
            "exported": exported}, indent=2))
        return 0
    if exported:
        print("for other trainers: " + ", ".join(exported))
    counts, filters = manifest["counts"], manifest["filters"]
    print(f"wrote {out / 'train.jsonl'} ({counts['train']} rows), {out / 'eval.jsonl'} ({counts['eval']} questions), "
          f"{out / 'dataset.json'}")
    print(f"{counts['facts']} facts from {counts['chunks']} chunks of {counts['documents']} documents in "
          f"{manifest['seconds']:.0f} s; removed: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in filters.items()))
    for doc_id in manifest["documents_without_facts"]:
        print(f"  {doc_id}: no facts found (nothing in it reads as a statement)")
    return 0


def _build_progress(p) -> None:
    if p.done % max(1, p.total // 200) and p.done != p.total:  # a line per half percent is enough
        return
    filled = int(30 * p.done / max(p.total, 1))
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {p.done}/{p.total} {p.stage:22} ETA {p.eta_s:.0f}s ",
          end="", file=sys.stderr, flush=True)


def cmd_experiment(args) -> int:
    """Every arm on the same held-out questions; writes metrics.json, results.csv, report.html; prints the table."""
    from pathlib import Path

    from backends.apps.experiment import ExperimentOptions, run_experiment, table, within_budget
    from backends.service import PARTS

    try:
        paraphrases = tuple(int(k) for k in args.paraphrases.split(",") if k.strip())
    except ValueError:
        raise_bad("--paraphrases takes comma-separated counts, for example 0,3")
    options = ExperimentOptions(arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()), paraphrases=paraphrases,
                                limit=args.limit, dataset=Path(args.dataset) if args.dataset else None)
    options.check()  # before any model loads
    if args.minutes is not None and args.minutes <= 0:
        raise_bad("--minutes must be more than 0")
    duet = _duet(args, warm=PARTS)
    if args.minutes is not None:
        options, left_out = within_budget(options, args.minutes, duet.index.chunk_count(), args.limit or 90)
        _progress(f"within {args.minutes:g} minutes: arms {', '.join(options.arms)}, K {options.paraphrases}"
                  + (f"; left out {', '.join(left_out)}" if left_out else ""))
    out = Path(args.out) if args.out else duet.settings.runs_dir / "experiments" / "latest"
    experiment = run_experiment(duet, options, out, on_progress=lambda p: _progress(f"[{p.arm}] {p.step} (ETA {p.eta_s:.0f}s)"))
    rows = table(experiment, duet.index.snapshot())
    if args.json:
        print(json.dumps({"out": str(out), "questions": experiment.questions, "seconds": experiment.seconds,
                          "parts": experiment.parts, "table": rows, "intervals": experiment.intervals,
                          "stress": experiment.stress,
                          "freshness": {k: v for k, v in experiment.freshness.items() if k != "rows"}}, indent=2))
        return 0
    for row in rows:
        print(f"{row['arm']:7} contains {row['contains']:.3f} [{row['95% interval']}] vs RAG {row['vs RAG'] or '-':28} "
              f"p50 {row['p50 s']:.2f}s  training {row['training min'] or 0} min")
    for arm, questions in experiment.unanswered.items():
        print(f"{arm}: {len(questions)} questions failed and are left out of every interval (errors in results.csv)")
    fresh = experiment.freshness
    if fresh.get("systems"):
        print(f"change a fact ({fresh['questions']} facts, in a copy): " + ", ".join(
            f"{system} new {c['new']} old {c['old']}" for system, c in fresh["systems"].items())
            + f"; retraining {fresh['adapter']} would take about {fresh['retrain_minutes']} min")
    print("wall time by part: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in experiment.parts.items()))
    print(f"wrote {out / 'metrics.json'}, {out / 'results.csv'}, {out / 'report.html'} ({experiment.seconds:.0f} s)")
    return 0


def cmd_adapter(args) -> int:
    """Import a LoRA trained elsewhere (LLaMA-Factory, Unsloth): checked against this base model, copied atomically.
    Or export one for a model server (llama.cpp's `--lora`, Ollama's `ADAPTER`) as a GGUF LoRA."""
    from backends.learning.adapters import check_adapter_name, import_adapter

    check_adapter_name(args.name)  # before any model loads
    if args.action == "export":
        return _export_adapter(args)
    duet = _duet(args)
    path = import_adapter(duet.registry, args.folder, args.name, duet.llm.config, args.overwrite)
    if args.json:
        print(json.dumps({"name": args.name, "path": str(path)}, indent=2))
    else:
        print(f"imported {args.name} into {path}: ask with --adapter {args.name}")
    return 0


def _export_adapter(args) -> int:
    from backends.learning.adapters import AdapterRegistry
    from backends.models.lora import base_config_of, export_gguf

    settings = load_settings(store_dir=getattr(args, "store", None))
    info = AdapterRegistry(settings).get(args.name)  # unknown or foreign to this base model: exit 2, nothing written
    out = Path(args.folder)
    target = out / f"{args.name}.gguf" if out.is_dir() else out
    if target.suffix != ".gguf" or not target.parent.is_dir():
        raise BadInput(f"OUT must be an existing folder or a .gguf file in one, not {out}")
    if target.exists() and not args.overwrite:
        raise BadInput(f"{target} exists: pass --overwrite to replace it")
    try:
        path = export_gguf(info.path, base_config_of(settings), target)
    except OSError as error:
        raise BadInput(f"cannot write {target}: {error.strerror or error}") from error
    size = path.stat().st_size
    if args.json:
        print(json.dumps({"name": args.name, "format": args.format, "path": str(path), "bytes": size}, indent=2))
    else:
        print(f"wrote {path} ({size / 1e6:.1f} MB): llama.cpp loads it with --lora, Ollama with ADAPTER "
              "(docs/engines.md, 'Serving Duet's adapters')")
    return 0


def cmd_serve(args) -> int:
    """/v1/models and /v1/chat/completions (streaming or not) over duet-rag, duet-ft:<adapter>, duet-rag-ft:<adapter>."""
    import os

    from backends.apps.serve import LOOPBACK, serve

    key = os.environ.get("DUET_API_KEY") or None
    if args.host not in LOOPBACK and not key:
        raise_bad(f"serving on {args.host} makes Duet reachable from other machines: set DUET_API_KEY, or use 127.0.0.1")
    _progress(f"serving Duet's systems on http://{args.host}:{args.port}/v1 (OpenAI-compatible)"
              + ("; API key required" if key else ""))
    from backends.service import PARTS

    serve(_duet(args, warm=PARTS), args.host, args.port, key)  # before the first request
    return 0


def cmd_setup(args) -> int:
    """Prepare the models and index the demo corpus when the store is empty (used by `make run`)."""
    duet = _duet(args)
    duet.llm  # converts and caches the bundled GGUF the first time
    index = duet.index
    if not index.documents():
        _progress("Indexing the demo corpus…")
        for result in index.ingest_paths([DATA_DIR / "corpus"]):
            _progress(f"  {result.name}: {result.describe()}")
    stats = index.stats()
    print(f"ready: {stats['documents']} documents, {stats['chunks']} chunks in {duet.settings.store_dir}")
    return 0


def cmd_eval(args) -> int:
    """Run a QA set through the systems; write metrics.json, results.csv and report.html."""
    from backends.apps.evaluation import SYSTEMS, freshness_experiment, load_qa, run_eval, save_run

    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise_bad(f"unknown system {', '.join(unknown) or '(none)'}: choose from {', '.join(SYSTEMS)}")
    if args.limit is not None and args.limit < 1:
        raise_bad("--limit must be at least 1")
    from backends.service import parts_for

    items = load_qa(args.set)[: args.limit]  # validated before any model loads
    duet = _duet(args, warm=parts_for(systems) + ("tracer",))
    if args.adapter:
        duet.registry.get(args.adapter)
    run = run_eval(duet, items, systems, args.adapter, on_progress=_eval_progress())
    if args.freshness:
        run.freshness = freshness_experiment(duet, DATA_DIR / "corpus_updates", DATA_DIR / "qa" / "updates.jsonl",
                                             systems, args.adapter, on_progress=_eval_progress())
    out = save_run(run, args.out or duet.settings.runs_dir / run.id)
    print(file=sys.stderr)
    for system, m in run.metrics.items():
        print(f"{system:7} EM {m.exact_match:.3f}  F1 {m.f1:.3f}  contains {m.contains:.3f}  "
              f"semantic {m.semantic:.3f}  grounded {m.groundedness:.3f}  "
              f"recall@k {m.recall_at_k if m.recall_at_k is not None else '-'}  "
              f"p50 {m.latency['total'].p50:.2f}s  p95 {m.latency['total'].p95:.2f}s  {m.tokens_per_s:.1f} tok/s"
              + (f"  {m.failed} failed (their errors are in results.csv)" if m.failed else ""))
    print(run.latency_note)
    if args.freshness:
        for system, c in run.freshness.systems.items():
            print(f"freshness {system}: {c.new} of {run.freshness.questions} new facts, {c.old} old facts")
    print(f"wrote {out / 'metrics.json'}, {out / 'results.csv'}, {out / 'report.html'}")
    return 0


def cmd_bench(args) -> int:
    """Measure speed (see backends/apps/bench.py); a table, or with --json one JSON object."""
    from backends.apps.bench import format_table, run_bench

    # The model only: bench may index the demo corpus into an empty store from a child process first (the other parts
    # are built, on this thread, by the measurements that fan out: `stream_both` and `ask_many` warm what they use).
    result = run_bench(_duet(args, warm=("llm",)), quick=args.quick, progress=_progress)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _eval_progress():
    """A progress line with the ETA from this run's own rate so far."""
    from backends.core.jobs import Eta

    eta = Eta()
    return lambda done, total, label: print(f"\r[{done}/{total}] {eta.text(done, total):9} {label[:70]:70}", end="",
                                            file=sys.stderr, flush=True)


def raise_bad(message: str):
    raise BadInput(message)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"duet: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m backends", description="Duet: RAG and fine-tuning side by side.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_store(p):
        p.add_argument("--store", help="folder for the index, manifest and runs (default data/store, or DUET_STORE)")
        return p

    p = with_store(sub.add_parser("ingest", help="add documents to the index"))
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_ingest)

    p = with_store(sub.add_parser("docs", help="list or delete documents"))
    p.add_argument("action", choices=["list", "delete"])
    p.add_argument("doc_id", nargs="?", metavar="DOC_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_docs)

    p = with_store(sub.add_parser("ask", help="ask a question"))
    p.add_argument("question", metavar="QUESTION")
    p.add_argument("--backend", choices=["rag", "ft", "both"], default="both")
    p.add_argument("--adapter", help="adapter name for the fine-tuned backend (default: the active one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ask)

    p = with_store(sub.add_parser("train", help="train a LoRA adapter on question/answer pairs"))
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help='JSONL lines of {"question": ..., "answer": ...} (or a train.jsonl from `dataset build`)')
    p.add_argument("--name", required=True, help="adapter name (folder under data/adapters)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter of that name")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = with_store(sub.add_parser("adapter", help="import a peft LoRA folder trained elsewhere on the same base model, "
                                                  "or export one as a GGUF LoRA for llama.cpp or Ollama"))
    p.add_argument("action", choices=["import", "export"])
    p.add_argument("folder", metavar="DIR|OUT", help="import: the folder with adapter_config.json and "
                   "adapter_model.safetensors; export: the .gguf file to write, or a folder (NAME.gguf in it)")
    p.add_argument("--name", required=True, help="adapter name in Duet's registry")
    p.add_argument("--format", choices=["gguf"], default="gguf", help="export: the file format (GGUF LoRA)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter of that name (import) or "
                   "file (export)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_adapter)

    p = with_store(sub.add_parser("serve", help="an OpenAI-compatible endpoint over Duet's systems"))
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default loopback; another one needs DUET_API_KEY)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = with_store(sub.add_parser("eval", help="evaluate the backends on a QA set"))
    p.add_argument("--set", required=True, metavar="FILE.jsonl",
                   help="QA set, one {question, answer[, source]} per line (required; the demo's is data/qa/eval.jsonl)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--out", help="folder for metrics.json, results.csv, report.html (default: a new run in the store)")
    p.add_argument("--systems", default="rag,ft", help="comma-separated: rag, ft, rag_ft (default rag,ft)")
    p.add_argument("--adapter", help="adapter for ft and rag_ft (default: the active one)")
    p.add_argument("--freshness", action="store_true", help="also run the freshness experiment on a copy of the index")
    p.set_defaults(func=cmd_eval)

    p = with_store(sub.add_parser("dataset", help="build a fine-tuning dataset from the indexed documents"))
    p.add_argument("action", choices=["build"])
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.jsonl, eval.jsonl and dataset.json")
    p.add_argument("--docs", nargs="+", metavar="DOC_ID", help="only these documents (default: all; see `docs list`)")
    p.add_argument("--paraphrases", type=int, default=_dataset_default("DEFAULT_PARAPHRASES"),
                   help="question wordings per fact beyond the first, 0 to 10 (default %(default)s)")
    p.add_argument("--format", choices=["qa", "raft", "text"], default="qa",
                   help="qa: question/answer chat pairs; raft: with gold and distractor chunks; text: the chunks")
    p.add_argument("--eval-share", type=float, default=0.2, help="share of facts asked again in eval.jsonl (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of RAFT's choices (default 0)")
    p.add_argument("--export", metavar="FORMATS", help="also write alpaca.jsonl and/or sharegpt.jsonl (OpenAI chat "
                   "messages) with provenance.jsonl and LLaMA-Factory's dataset_info.json, e.g. alpaca,sharegpt")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_dataset)

    p = with_store(sub.add_parser("experiment", help="every arm (base, RAG, fine-tuned, RAFT...) on the same questions"))
    p.add_argument("--dataset", metavar="DIR", help="a built dataset whose eval.jsonl are the questions (default: built)")
    p.add_argument("--arms", default="base,rag,ft,ft_par,rag_ft,raft",
                   help="comma-separated: base, rag, ft, ft_par, rag_ft, raft, text (default %(default)s)")
    p.add_argument("--paraphrases", default="0,3", help="K values: ft uses the smallest, ft_par the largest (default 0,3)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--minutes", type=float, help="a time budget: the largest grid that fits, and what it left out")
    p.add_argument("--out", help="folder for metrics.json, results.csv, report.html (default: runs/experiments/latest)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_experiment)

    p = with_store(sub.add_parser("bench", help="measure generation, retrieval, ingest, cold start and memory"))
    p.add_argument("--quick", action="store_true", help="a smoke run under a minute (fewer and shorter runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_bench)

    p = with_store(sub.add_parser("setup", help="prepare models and index the demo corpus if the store is empty"))
    p.set_defaults(func=cmd_setup)
    return parser


def _dataset_default(name: str):
    from backends.learning import datasets

    return getattr(datasets, name)


def _add_train_options(parser) -> None:
    """One option per TrainConfig field, with the field's help and default."""
    from dataclasses import MISSING, fields

    from backends.learning.training import TrainConfig

    for f in fields(TrainConfig):
        kind = {"int": int, "float": float}.get(str(f.type), str)
        default = f.default if f.default is not MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                            choices=f.metadata.get("choices"), help=f"{f.metadata.get('help', '')} (default {shown})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LoadFailed as error:  # not the user's input: exit 1, the traceback in the log
        print(f"duet: {error}", file=sys.stderr)
        return 1
    except DuetError as error:
        print(f"duet: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duet: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or a broken installation: one line here, the traceback in the log
        from backends.core.logs import log, start_logging

        try:
            path = start_logging(load_settings(store_dir=getattr(args, "store", None)).store_dir)
        except DuetError:  # settings that cannot be read: the log goes to the default store
            path = start_logging(DATA_DIR / "store")
        log.error("`%s` failed", args.command, exc_info=error)
        print(f"duet: {args.command} failed: {type(error).__name__}: {error} (the traceback is in {path})",
              file=sys.stderr)
        return 1
