"""Chat's pure parts: what a message asks (domain.chat.parse) and the extractive answer's ranking."""

from __future__ import annotations

from domain.chat import COMMANDS, ChatRequest, Document, answer, help_text, parse, rank, search_query, sentences, terms

KAFKA = Document(
    "k",
    "Kafka keeps an ordered log of events. Each partition has one writer. The weather was fine that day.",
)
POSTGRES = Document(
    "p", "PostgreSQL stores the read models. Projections write rows in one transaction with their position."
)


def test_a_slash_word_is_a_command_and_anything_else_a_question() -> None:
    assert parse("  /search kafka logs ") == ChatRequest("search", "kafka logs") == parse("/SEARCH kafka logs")
    assert parse("/status 123") == ChatRequest("status", "123")
    assert parse("/ingest some text\nmore") == ChatRequest("ingest", "some text\nmore")
    assert parse("/frobnicate now") == ChatRequest("unknown", "frobnicate")
    assert parse(" what does kafka keep? ") == ChatRequest("question", "what does kafka keep?")


def test_help_for_an_unknown_command_names_it_and_lists_every_command() -> None:
    text = help_text("frobnicate")
    assert "/frobnicate" in text
    assert all(line in text for line in COMMANDS.values())


def test_terms_drop_how_a_question_is_asked_and_keep_what_it_is_about() -> None:
    assert terms("What does Kafka keep? kafka, Kafka!") == ["kafka", "keep"]
    assert terms("a b 7 parti*") == ["7", "parti*"]
    assert search_query("What is it?") is None
    assert search_query("How are Kafka partitions ordered?") == "kafka or partitions or ordered"


def test_sentences_split_on_ends_and_paragraphs_and_collapse_whitespace() -> None:
    text = "First one.  Second\n one!\n\nA paragraph without end\n- an item"
    assert sentences(text) == ["First one.", "Second one!", "A paragraph without end", "- an item"]
    assert len(sentences("word " * 400)[0]) <= 500


def test_the_sentence_with_the_rarer_terms_ranks_first() -> None:
    ranked = rank("which partition has one writer in kafka", [KAFKA, POSTGRES])
    assert ranked[0].text == "Each partition has one writer." and ranked[0].object_id == "k"
    assert all(s.text != "The weather was fine that day." for s in ranked)  # no term: not an answer


def test_a_short_sentence_beats_a_long_one_with_the_same_terms() -> None:
    long = Document("l", "Kafka " + "and many other unrelated filler words " * 10 + "log.")
    short = Document("s", "The Kafka log.")
    assert [s.object_id for s in rank("kafka log", [long, short])] == ["s", "l"]


def test_ties_keep_the_retrieval_order() -> None:
    first, second = Document("a", "Kafka log."), Document("b", "Kafka log.")
    assert [s.object_id for s in rank("kafka log", [first, second])] == ["a", "b"]


def test_a_prefix_term_matches_the_words_it_begins() -> None:
    assert [s.object_id for s in rank("partit*", [POSTGRES, KAFKA])] == ["k"]


def test_answer_is_the_best_sentences_best_first_and_says_when_nothing_answers() -> None:
    text, quoted = answer("where are read models stored", [KAFKA, POSTGRES], limit=1)
    assert text == "PostgreSQL stores the read models." and [s.object_id for s in quoted] == ["p"]
    text, quoted = answer("zebrafinch", [KAFKA, POSTGRES])
    assert quoted == [] and "nothing" in text


def test_the_same_question_over_the_same_texts_gets_the_same_answer() -> None:
    assert answer("kafka log writer", [KAFKA, POSTGRES]) == answer("kafka log writer", [KAFKA, POSTGRES])
