"""Every page under Streamlit's AppTest, on the real backends and a copy of the demo store prepared by `make test`."""

import json
import os
import re
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from backends.core.config import DATA_DIR, REPO_ROOT
from pages.common import literal
from tests.helpers import PER_DIEM, copy_demo_store



@pytest.fixture(scope="module", autouse=True)
def page_store(tmp_path_factory):
    """Pages write into a copy of the demo store, so tests never change the user's own."""
    from pages import common

    root = tmp_path_factory.mktemp("pages")
    store = copy_demo_store(root / "store")
    shutil.copytree(DATA_DIR / "adapters" / "demo", root / "adapters" / "demo")  # adapters trained here stay here
    os.environ["DUET_STORE"], os.environ["DUET_ADAPTERS_DIR"] = str(store), str(root / "adapters")
    os.environ["DUET_PREPARE_STORY"] = "0"  # the story test prepares it when it opens; other pages need not wait
    common.app_settings.clear()
    common.duet.clear()
    yield store
    del os.environ["DUET_STORE"], os.environ["DUET_ADAPTERS_DIR"], os.environ["DUET_PREPARE_STORY"]
    common.app_settings.clear()
    common.duet.clear()


def page(name: str, timeout: int = 240) -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "pages" / f"{name}.py"), default_timeout=timeout)
    app.run()
    assert not app.exception, app.exception
    return app


def test_compare_answers_a_demo_question_in_both_columns_with_claims_and_exports():
    app = page("compare")
    assert app.toggle(key="compare.third") is not None and app.selectbox(key="compare.adapter").value == "demo"
    app.selectbox(key="compare.demo").select(PER_DIEM)
    app.button[0].click().run()
    assert not app.exception and not app.error
    headers = [h.value for h in app.subheader]
    assert headers[:2] == ["RAG (retrieval + base model)", "Fine-tuned (base model + LoRA, no retrieval)"]
    assert "Transparency: every claim and its evidence" in headers
    answers = [t.value for t in app.text]
    assert any("55 euros" in t for t in answers[:2]), answers
    labels = [m.label for m in app.metric]
    assert labels == ["First token", "Total", "Tokens/s"] * 2
    assert any("travel\\_policy\\.pdf" in e.label for e in app.expander), "RAG sources are listed"
    assert any("-badge[" in e.label for e in app.expander), "claims are shown with their verdicts"
    assert [d.label for d in app.get("download_button")] == ["Markdown", "HTML", "JSON"]
    assert any(m.value.startswith("[Link to this question](?q=What") for m in app.markdown)
    # The history keeps this question; a rerun (a widget change) re-draws without asking again.
    app.run()
    assert any("This session (1 question)" == h.value for h in app.subheader)


def test_compare_reopens_a_question_from_the_link_and_presentation_mode_is_read_only():
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=240)
    app.query_params["q"] = PER_DIEM
    app.query_params["present"] = "1"
    app.run()
    assert not app.exception
    assert len([h for h in app.subheader if h.value.startswith(("RAG", "Fine-tuned"))]) == 2
    assert not app.get("download_button") and not app.sidebar.selectbox, "no exports or settings when presenting"
    # By default: the answer, a one-line verdict and the time; no engine, stage chart or claim list.
    assert not any("onnxruntime" in c.value or "SmolLM2" in c.value for c in app.caption)
    assert not app.metric and not any("Transparency" in h.value for h in app.subheader)
    assert len([c for c in app.caption if c.value.startswith("answered in ")]) == 2
    assert any("travel\\_policy\\.pdf" in m.value and "-badge[" in m.value for m in app.markdown)
    app.toggle(key="compare.detail").set_value(True).run()
    assert [m.label for m in app.metric] == ["First token", "Total", "Tokens/s"] * 2
    assert any("Transparency" in h.value for h in app.subheader)


def test_the_ask_button_names_the_three_columns_when_the_third_is_on():
    app = page("compare")
    assert [b.label for b in app.button if b.label.startswith("Ask")] == ["Ask both"]
    app.toggle(key="compare.third").set_value(True).run()
    assert [b.label for b in app.button if b.label.startswith("Ask")] == ["Ask all three"]


def test_compare_refuses_an_over_long_paste_with_the_limit():
    app = page("compare")
    app.text_input(key="compare.question").set_value("Where is the harbour" + "?" * 8700)
    app.button[0].click().run()
    assert not app.exception
    assert any("8,720 characters long; the limit is 1,000" in e.value for e in app.error), [e.value for e in app.error]
    assert not any(h.value.startswith("RAG") for h in app.subheader), "nothing was asked"


def test_the_story_walks_its_steps_under_apptest():
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=300)
    app.query_params["present"], app.query_params["story"] = "1", "1"
    app.run()
    seen = []
    for step in range(6):
        assert not app.exception, app.exception
        seen.append(app.header[0].value)
        if step < 5:
            app.button(key="story.next").click().run()
    assert seen[0] == "A fact both sides know" and seen[-1] == "The recommendation" and len(set(seen)) == 6
    # Each step's words hold for this store: "both answer" only when both answers hold the fact's answer, "RAG finds
    # it, the adapter guesses" only when RAG's does and the adapter's does not.
    from backends.answering.scoring import contains_gold
    from backends.apps.story import prepared_story
    from pages.common import duet

    steps = prepared_story(duet()).steps
    holds = [{s: bool(contains_gold(a.text, steps[n].gold)) for s, a in steps[n].answers.items()} for n in (0, 1)]
    assert steps[0].gold and ("Both answer" in steps[0].narration) == all(holds[0].values()), steps[0]
    assert ("RAG finds it" in steps[1].narration) == (holds[1]["rag"] and not holds[1]["ft"]), steps[1]
    assert app.button(key="story.next").disabled and any("recommends" in m.value for m in app.markdown)
    app.button(key="story.back").click().run()
    assert app.header[0].value == "What the measurements say"


def test_a_blind_vote_shows_two_unnamed_answers_then_the_reveal_and_evaluate_shows_the_preference():
    from backends.apps.votes import current_round
    from pages.common import duet

    app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=240)
    app.query_params["present"], app.query_params["vote"] = "1", "1"
    app.run()
    assert any("Waiting for the presenter" in i.value for i in app.info)
    app.selectbox(key="vote.pick").select(PER_DIEM)
    app.button[0].click().run()  # Put to the vote
    assert not app.exception and not app.error, app.error
    chosen = current_round(duet().settings)
    assert [h.value for h in app.subheader][:2] == ["Answer A", "Answer B"]
    shown = [t.value for t in app.text]
    assert shown[:2] == [chosen.answers["A"], chosen.answers["B"]] and not any("RAG" in h.value for h in app.subheader)
    app.button(key=f"vote.A-{chosen.id}").click().run()
    assert any("Your vote: Answer A is better" in c.value for c in app.caption), [c.value for c in app.caption]
    app.button(key=f"vote.reveal-{chosen.id}").click().run()
    assert any(f"**Answer A** was **{'RAG' if chosen.sides['A'] == 'rag' else 'Fine-tuned'}**" in m.value
               for m in app.markdown)
    evaluate = page("evaluate")
    assert any(h.value == "Human preference (blind votes)" for h in evaluate.subheader)
    table = next(f.value for f in evaluate.dataframe if "share preferring RAG" in f.value)
    assert list(table["votes"]) == [1] and list(table["preferred RAG"]) == [int(chosen.sides["A"] == "rag")]


def test_documents_page_ingests_an_uploaded_file_and_rejects_a_bad_one():
    app = page("documents")
    before = int(app.metric[0].value)
    app.file_uploader[0].set_value([
        ("harbour_notes.txt", b"Harbour notes. The pilot boat Marigold leaves the quay at 06:40 every weekday.", "text/plain"),
        ("empty.txt", b"", "text/plain"),
        ("notes.md", bytes(range(256)) * 16, "text/markdown"),
    ])
    app.run()
    app.button(key="documents.ingest").click().run()
    assert not app.exception
    results = [t.value for t in app.text]
    assert any(r.startswith("✅ harbour_notes.txt: added") for r in results), results
    assert any(r.startswith("❌ empty.txt: rejected") for r in results), results
    assert any(r.startswith("❌ notes.md: rejected: this does not look like text") for r in results), results
    assert int(app.metric[0].value) == before + 1
    # The same file again is skipped, naming the document it duplicates.
    app.file_uploader[0].set_value([("copy.txt", b"Harbour notes. The pilot boat Marigold leaves the quay at 06:40 every "
                                                 b"weekday.", "text/plain")])
    app.run()
    app.button(key="documents.ingest").click().run()
    assert any("the same file is already indexed as harbour_notes.txt (id harbour-notes-txt)" in t.value
               for t in app.text), [t.value for t in app.text]
    # Delete asks first, then says what it deleted.
    app.selectbox(key="documents.chosen").set_value("harbour-notes-txt").run()
    app.button(key="documents.delete").click().run()
    assert any(f"Delete {literal('harbour_notes.txt')}" in w.value for w in app.warning)
    assert int(app.metric[0].value) == before + 1
    app.button(key="documents.yes").click().run()
    assert not app.exception and int(app.metric[0].value) == before
    assert any(s.value == f"Deleted {literal('harbour_notes.txt')} (1 chunk)." for s in app.success), \
        [s.value for s in app.success]


def test_untrusted_names_and_headings_on_the_documents_page_are_shown_as_text():
    from pages.common import duet

    hostile, name = "[click](javascript:alert(1)) **loud** <b>x</b>", "notes [x](javascript:alert(1)) **loud**.md"
    added = duet().index.ingest_bytes(name, f"# {hostile}\nThe quay opens at 06:00.".encode())
    app = page("documents")
    app.selectbox(key="documents.chosen").set_value(added.doc_id).run()
    captions = [c.value for c in app.caption]
    assert any(literal(hostile) in c for c in captions), captions
    app.button(key="documents.delete").click().run()
    assert any(literal(name) in w.value for w in app.warning)
    app.button(key="documents.yes").click().run()
    assert any(s.value.startswith(f"Deleted {literal(name)}") for s in app.success)


def test_finetune_page_validates_an_uploaded_dataset():
    app = page("finetune")
    assert app.button(key="finetune.start") is not None and app.number_input(key="finetune.rank").value == 8
    assert "demo" in app.selectbox(key="finetune.chosen").options
    assert app.get("download_button"), "the chosen adapter can be downloaded as GGUF"
    app.radio(key="finetune.dataset").set_value("Upload a JSONL file").run()
    good = json.dumps({"question": "Q?", "answer": "A."})
    app.file_uploader[0].set_value(("bad.jsonl", f"{good}\n{{\"question\": \"no answer\"}}\n".encode(), "application/json"))
    app.run()
    assert any("line 2" in e.value for e in app.error), [e.value for e in app.error]
    assert app.button(key="finetune.start").disabled
    app.file_uploader[0].set_value(("good.jsonl", f"{good}\n{good}\n".encode(), "application/json"))
    app.run()
    assert not app.error and any("2 valid question/answer pairs" in s.value for s in app.success)
    assert not app.button(key="finetune.start").disabled
    # The time it will take is said before the button: 2 rows in batches of 8, 5 epochs.
    assert any("2 rows × 5 epochs = 5 steps: about" in c.value for c in app.caption), [c.value for c in app.caption]


def test_finetune_page_keeps_the_users_values_after_a_training_run():
    from pages.common import duet

    jobs = lambda: {"job": duet().jobs["training"]}  # noqa: E731

    app = page("finetune")
    app.number_input(key="finetune.rank").set_value(4)
    app.number_input(key="finetune.max_steps").set_value(1)
    app.number_input(key="finetune.batch_size").set_value(2)
    app.text_input(key="finetune.name").set_value("kept-values")
    app.run()
    app.button(key="finetune.start").click().run()
    jobs()["job"].wait(240)
    app.run()
    assert not app.exception and jobs()["job"].state == "done", jobs()["job"].error
    assert app.number_input(key="finetune.rank").value == 4 and app.number_input(key="finetune.max_steps").value == 1
    assert app.text_input(key="finetune.name").value == "kept-values"
    assert any("Adapter kept-values saved" in m.value for m in app.success), [m.value for m in app.success]
    # Deleting it says so, and the "saved" message of the run that made it is gone.
    app.selectbox(key="finetune.chosen").set_value("kept-values").run()
    app.checkbox(key="finetune.sure").check().run()
    app.button(key="finetune.delete").click().run()
    assert not app.exception and "kept-values" not in duet().registry.names()
    assert [m.value for m in app.success if "kept" in m.value] == [literal("Deleted adapter kept-values.")]


def test_finetune_page_builds_a_dataset_shows_its_evidence_and_saves_it_for_training():
    from pages.common import duet

    builds = lambda: {"job": duet().jobs["dataset build"]}  # noqa: E731

    app = page("finetune")
    app.multiselect(key="finetune.build.docs").set_value(["company-overview-md"])
    app.number_input(key="finetune.build.k").set_value(0)
    app.run()
    assert any(re.match(r"1 document, \d+ chunks?: about", c.value) for c in app.caption), [c.value for c in app.caption]
    app.button(key="finetune.build.start").click().run()
    builds()["job"].wait(180)
    app.run()
    assert not app.exception, app.exception
    assert builds()["job"].state == "done", builds()["job"].error
    assert any("training row" in s.value and "held-out question" in s.value and "1 chunks" not in s.value
               for s in app.success), [s.value for s in app.success]
    assert any(":orange-background[" in m.value for m in app.markdown), "the chosen row's evidence is highlighted"
    app.radio(key="finetune.dataset").set_value("Built from my documents").run()
    assert any("save it first" in i.value for i in app.info), "an unsaved build cannot be chosen yet, and says so"
    app.text_input(key="finetune.build.name").set_value("overview")
    app.checkbox(key="finetune.build.export").check()
    app.button(key="finetune.build.save").click().run()
    assert any(s.value.startswith("Saved ") and "alpaca.jsonl" in s.value for s in app.success), [s.value for s in app.success]
    app.radio(key="finetune.dataset").set_value("Built from my documents").run()
    assert any(o.startswith("overview · ") for o in app.selectbox(key="finetune.built").options)
    assert not app.button(key="finetune.start").disabled


def evaluated(app: AppTest) -> AppTest:
    """Click "Run evaluation", wait for the background job, and render the page again."""
    from pages.common import duet

    app.button(key="evaluate.run").click().run()
    job = duet().jobs["evaluation"]
    job.wait(240)
    assert job.state == "done", job.error
    return app.run()


def test_evaluate_page_runs_an_evaluation_as_a_job_and_shows_it():
    from pages.common import duet

    app = page("evaluate")
    app.number_input(key="evaluate.limit").set_value(1)
    app.multiselect(key="evaluate.systems").set_value(["rag"])
    evaluated(app)
    assert not app.exception and not app.error
    first = next(s.value for s in app.success if s.value.startswith("Run ")).split()[1]
    assert app.selectbox(key="evaluate.run-a").value == first and app.dataframe
    assert any("8 questions in flight" in c.value for c in app.caption), "its latencies say they were measured under load"
    assert [d.label for d in app.get("download_button")] == ["report.html", "results.csv", "metrics.json"]
    columns = set(app.dataframe[0].value.columns)
    assert {"Gold answer contained", "Backed by sources", "Typical time (s)"} <= columns, columns
    assert "Exact match" not in columns and "exact_match" not in columns, "answers are sentences: no exact match"
    every = next(f.value for f in app.dataframe if "answer" in f.value.columns)
    assert set(every["system"]) == {"RAG"}, "every answer names its system as the page does"
    # A run can be cancelled: nothing is saved, and the page says so.
    runs_before = set(os.listdir(duet().settings.runs_dir))
    app.number_input(key="evaluate.limit").set_value(85)  # 170 answers: the cancel comes long before the end
    app.multiselect(key="evaluate.systems").set_value(["rag", "ft"])
    app.button(key="evaluate.run").click().run()
    app.button(key="evaluate.eval.cancel").click().run()
    duet().jobs["evaluation"].wait(240)
    app.run()
    assert duet().jobs["evaluation"].state == "cancelled" and set(os.listdir(duet().settings.runs_dir)) == runs_before
    assert any("cancelled" in w.value for w in app.warning), [w.value for w in app.warning]
    app.multiselect(key="evaluate.systems").set_value(["rag"])
    # An uploaded question set, validated; the new run is the one shown, and two runs compare in one table.
    app.radio(key="evaluate.set").set_value("Upload a JSONL file").run()
    good = json.dumps({"question": "What is the per diem for meals?", "answer": "55 euros"})
    app.file_uploader(key="evaluate.upload").set_value(("mine.jsonl", f"{good}\n{{\"question\": 1}}\n".encode(), "application/json"))
    app.run()
    assert any("line 2" in e.value for e in app.error), [e.value for e in app.error]
    assert "evaluate.run" not in [b.key for b in app.button], "no run on an invalid set"
    app.file_uploader(key="evaluate.upload").set_value(("mine.jsonl", f"{good}\n".encode(), "application/json"))
    app.run()
    app.multiselect(key="evaluate.systems").set_value(["rag"])
    evaluated(app)
    assert not app.exception and not app.error
    second = next(s.value for s in app.success if s.value.startswith("Run ")).split()[1]
    assert second != first and app.selectbox(key="evaluate.run-a").value == second
    app.selectbox(key="evaluate.run-b").set_value(first).run()
    runs_in_table = {row for frame in app.dataframe if "run" in frame.value for row in frame.value["run"]}
    assert runs_in_table == {first, second} and len(app.tabs) == 2
    assert len([d for d in app.get("download_button") if d.label == "report.html"]) == 2, "each run has its charts"


def test_guide_page_recommends_with_reasons():
    from pages.common import duet

    app = page("guide")
    assert app.subheader[0].value.startswith("Recommendation: ")
    # The training rows default to what the active adapter was trained on, not a fixed number.
    examples = duet().ft.adapter_info(duet().registry.active_name()).metadata["dataset"]["examples"]
    assert app.number_input(key="guide.examples").value == examples
    app.select_slider(key="guide.changing").set_value("low")
    app.select_slider(key="guide.trace").set_value("low")
    app.checkbox(key="guide.external").uncheck()
    app.select_slider(key="guide.terms").set_value("high")
    app.number_input(key="guide.examples").set_value(5000)
    app.run()
    assert app.subheader[0].value in ("Recommendation: Fine-tuned", "Recommendation: RAG + fine-tuned")
    assert any("domain wording" in m.value for m in app.markdown)


HOSTILE = ('<script>alert(1)</script> <img src="https://evil.example/i.png" onerror="alert(2)"> '
           '[click](javascript:alert(3)) ![pixel](https://evil.example/p.png) **bold** $x$')
UNESCAPED_LINK = re.compile(r"(?<!\\)\]\((?:https?|javascript):")
UNESCAPED_TAG = re.compile(r"(?<!\\)<\s*(?:img|script)", re.IGNORECASE)


def test_a_hostile_answer_and_source_are_shown_as_text_only():
    from backends.core.types import Answer, Source
    from pages.common import duet

    question = "What does the hostile document say?"
    source = Source("c1", "evil-md", '<img src=x onerror=alert(1)>.md', "page 1", HOSTILE, 0.9)
    answers = {"rag": Answer("rag", question, HOSTILE, sources=(source,)),
               "ft": Answer("ft", question, HOSTILE, adapter="demo")}
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=240)
    app.query_params["q"] = question
    app.session_state["compare.current"] = duet().trace(question, answers)
    app.run()
    assert not app.exception
    assert sum(HOSTILE in t.value for t in app.text) >= 2, "both answers are shown, as plain text"
    rendered = [m.value for m in app.markdown] + [e.label for e in app.expander] + [c.value for c in app.caption]
    for value in rendered:
        assert not UNESCAPED_LINK.search(value) and not UNESCAPED_TAG.search(value), value
    assert not any(m.proto.allow_html and "evil" in m.value for m in app.markdown)
    assert not any("evil" in str(h.proto) for h in app.get("html"))


def documents_page(secrets: dict | None = None) -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "documents.py"), default_timeout=240)
    for name, value in (secrets or {}).items():
        app.secrets[name] = value
    app.run()
    assert not app.exception, app.exception
    return app


def test_an_admin_password_guards_uploading_and_deleting():
    app = documents_page({"admin_password": "s3cret-word"})
    assert not app.file_uploader and app.button(key="documents.delete").disabled
    app.text_input(key="access.password").set_value("guess").run()
    assert any("not the admin password" in e.value for e in app.error) and not app.file_uploader
    app.text_input(key="access.password").set_value("s3cret-word").run()
    assert app.file_uploader and not app.button(key="documents.delete").disabled


def test_a_configured_login_guards_uploading_and_training():
    auth = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "c" * 32, "client_id": "duet",
            "client_secret": "secret", "server_metadata_url": "https://login.example/.well-known/openid-configuration"}
    app = documents_page({"auth": auth})
    assert not app.file_uploader and app.button(key="access.login").label == "Log in"
    assert any("need you to sign in" in i.value for i in app.info)
    train = AppTest.from_file(str(REPO_ROOT / "pages" / "finetune.py"), default_timeout=240)
    train.secrets["auth"] = auth
    train.run()
    assert not train.exception
    assert all(b.key != "finetune.start" for b in train.button) and train.button(key="finetune.delete").disabled


def test_served_beyond_this_computer_with_nothing_guarding_changes_duet_does_not_start():
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
        app.run()
        assert not app.exception and any("did not start" in e.value and "0.0.0.0" in e.value for e in app.error)
        assert not app.text_area, "no page was drawn"
        guarded = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
        guarded.secrets["admin_password"] = "s3cret-word"
        guarded.run()
        assert not guarded.exception and not any("did not start" in e.value for e in guarded.error)
    finally:
        config.set_option("server.address", before)


def test_beyond_this_computer_previews_and_downloads_need_the_same_access_as_changes():
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        app = documents_page({"admin_password": "s3cret-word"})
        assert not app.text and any("Document previews need" in c.value for c in app.caption)
        app.text_input(key="access.password").set_value("s3cret-word").run()
        assert app.text, "with the password the chunks are shown"
        train = AppTest.from_file(str(REPO_ROOT / "pages" / "finetune.py"), default_timeout=240)
        train.secrets["admin_password"] = "s3cret-word"
        train.run()
        assert not train.exception and not train.get("download_button")
        assert any("Adapter downloads" in c.value for c in train.caption)
    finally:
        config.set_option("server.address", before)


def test_a_broken_secrets_file_is_an_error_not_an_open_app(tmp_path):
    import streamlit as st
    from streamlit import config

    from pages.common import SecretsUnreadable, access_mode

    broken = tmp_path / "secrets.toml"
    broken.write_text('admin_password = "no closing quote\n')
    before = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(broken)])
    st.secrets._secrets = None
    try:
        with pytest.raises(SecretsUnreadable, match="secrets.toml"):
            access_mode()
    finally:
        config.set_option("secrets.files", before)
        st.secrets._secrets = None


def test_a_login_without_an_admins_list_lets_nobody_change_data(monkeypatch):
    from pages import common

    auth = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "c" * 32, "client_id": "duet",
            "client_secret": "secret", "server_metadata_url": "https://login.example/.well-known/openid-configuration"}
    # Signing in at a real provider cannot happen here: the provider's answer is stood in for.
    monkeypatch.setattr(common, "_secrets", lambda: {"auth": auth})
    monkeypatch.setattr(common, "presenting", lambda: False)
    monkeypatch.setattr(common.st, "user", {"is_logged_in": True, "email": "anyone@example.org"})
    warnings = []
    monkeypatch.setattr(common.st, "warning", warnings.append)
    assert not common.may_change_data("Uploading") and "no admins are listed" in warnings[0]


def test_read_only_demo_mode_hides_changes_but_compare_stays_open():
    from pages import common

    os.environ["DUET_READ_ONLY"] = "1"
    common.app_settings.clear()
    try:
        app = documents_page()
        assert not app.file_uploader and app.button(key="documents.delete").disabled
        assert any("read-only demo" in i.value for i in app.info)
        compare = page("compare")
        assert compare.button[0].label == "Ask both" and not compare.button[0].disabled
    finally:
        del os.environ["DUET_READ_ONLY"]
        common.app_settings.clear()


def test_the_question_in_an_evaluations_progress_bar_is_shown_as_text():
    from backends.apps.evaluation import EvalProgress
    from pages.panels import eval_progress

    question = "**Loud** [click](javascript:alert(1)) ![x](https://evil.example/x.png)"
    share, text = eval_progress(EvalProgress(1, 4, question, 12.0))
    assert share == 0.25 and "about 12 s left" in text
    assert "**Loud**" not in text and "](javascript" not in text and "![x]" not in text


def test_the_file_name_in_the_upload_progress_bar_is_shown_as_text():
    from pages.panels import indexing_text

    name = "**report** [x](https://evil.example).md"
    text = indexing_text(name, 2, 3)
    assert "**report**" not in text and "](https" not in text and text.endswith("(2 of 3)…")
