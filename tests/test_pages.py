"""The Documents and Home pages through streamlit.testing (AppTest), on the real database."""

import pytest
import samples
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.documents.library import list_documents

APP = "../streamlit_app.py"


@pytest.fixture
def app(settings):
    st.cache_resource.clear()  # the app's cached Database must follow this module's settings
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def documents_page(at: AppTest) -> AppTest:
    at.switch_page("pages/documents.py").run()
    assert not at.exception
    return at


def test_first_run_screen_tells_what_to_do(app):
    assert any("Start here" in h.value for h in app.subheader)
    assert any("Upload your documents" in m.value for m in app.markdown)
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert "External Postgres" in sidebar  # the tests point DATABASE_URL at the test database
    assert "all-MiniLM-L6-v2" in sidebar


def test_upload_two_files_then_search_and_delete(app, db):
    at = documents_page(app)
    assert at.selectbox(key="selected_collection").value == "default"
    at.file_uploader[0].set_value(
        [("pumps.md", samples.MARKDOWN, "text/markdown"), ("empty.txt", b"", "text/plain"), ("memo.txt", samples.TEXT.encode(), "text/plain")]
    )
    at.button(key="add_documents").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["pumps.md: added, 3 chunks.", "memo.txt: added, 1 chunk."]
    assert [e.value for e in at.error] == ["empty.txt: is empty (0 bytes). Check that the file was saved before uploading it."]
    assert sorted(d.filename for d in list_documents(db, "default")) == ["memo.txt", "pumps.md"]

    # the library tab lists them with their chunk counts
    table = at.dataframe[0].value
    assert sorted(zip(table["name"], table["chunks"], strict=True)) == [("memo.txt", 1), ("pumps.md", 3)]

    at.text_input(key="search_query").set_value("when does the relief valve open")
    at.button(key="run_search").click().run()
    assert not at.exception
    first_result = at.markdown[[m.value for m in at.markdown].index("**[1] memo.txt** · chunk 1")]
    assert first_result is not None
    assert any("3.5 bar" in t.value for t in at.text)

    # delete one document from the library tab
    at.selectbox(key="chosen_document").select(next(d for d in list_documents(db, "default") if d.filename == "memo.txt"))
    at.run()
    at.button(key="confirm_delete_document").click().run()
    assert not at.exception
    assert [d.filename for d in list_documents(db, "default")] == ["pumps.md"]


def test_search_errors_are_shown_in_the_page(app):
    at = documents_page(app)
    at.text_input(key="search_query").set_value("")
    at.button(key="run_search").click().run()
    assert [e.value for e in at.error] == ["Type a question or some words to search for."]
    at.text_input(key="search_query").set_value("seal " * 3000)
    at.button(key="run_search").click().run()
    assert "the limit is 2,000" in at.error[0].value


def test_new_collection_is_created_and_selected(app):
    at = documents_page(app)
    at.text_input(key="new_collection_name").set_value("Pump manuals")
    at.button(key="create_collection").click().run()
    assert not at.exception
    assert at.selectbox(key="selected_collection").value == "Pump manuals"
    at.text_input(key="new_collection_name").set_value("Pump manuals")
    at.button(key="create_collection").click().run()
    assert "already exists" in at.error[0].value
