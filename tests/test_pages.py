"""Pages under Streamlit's AppTest, on the real backends and the default store prepared by `make test`."""

from streamlit.testing.v1 import AppTest

from backends.config import REPO_ROOT


def test_compare_answers_a_demo_question_in_both_columns():
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=240)
    app.run()
    assert not app.exception
    app.selectbox[0].select("What is the per diem for a full day of business travel?")
    app.button[0].click().run()
    assert not app.exception and not app.error
    assert [h.value for h in app.subheader][:2] == ["RAG (retrieval + base model)", "Fine-tuned (base model + LoRA, no retrieval)"]
    assert any("55 euros" in t.value for t in app.text)
    assert len(app.metric) == 6 and any("travel_policy.pdf" in e.label for e in app.expander)


def test_documents_page_lists_the_index():
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "documents.py"), default_timeout=120)
    app.run()
    assert not app.exception
    assert app.metric[0].label == "Documents" and int(app.metric[0].value) > 0
