"""What a chat message asks and how an answer is drawn from the caller's own texts: pure logic, no I/O.

``parse`` tells a slash command (``/search q``, ``/status id``, ``/ingest text``, ``/help``) from a
question. ``answer`` is extractive: it splits the retrieved texts into sentences, scores each by the
question's terms (rarer terms weigh more, every distinct term counts once, long sentences are
damped), and returns the best few with the object each came from. No model, so the same question
over the same texts always gets the same answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

COMMANDS = {
    "search": "/search <words>: find your objects (full-text search, best first)",
    "status": "/status <execution id>: the status of one of your executions",
    "ingest": "/ingest <text>: store the text as a new object of yours (needs the write permission)",
    "help": "/help: this list",
}
MAX_TERMS = 16  # a question's words searched for; more add cost, not precision
MAX_SENTENCE_CHARS = 500
_WORD = re.compile(r"\w+\*?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*[-*#\d])")
# Words that say how a question is asked, not what it is about (the text search language may be
# "simple", which keeps every word): they would match nearly every sentence.
_STOPWORDS = (
    "a an and are as at be by can could did do does for from had has have how i in is it its me my of on or"
    " our should so that the their them there these they this to was we were what when where which who whom"
    " why will with would you your about tell show give please"
)
STOPWORDS = frozenset(_STOPWORDS.split())


@dataclass(frozen=True)
class ChatRequest:
    kind: str  # question, search, status, ingest, help, unknown
    argument: str  # the question, or the command's argument


@dataclass(frozen=True)
class Document:
    object_id: str
    text: str


@dataclass(frozen=True)
class Sentence:
    object_id: str
    text: str
    score: float


def parse(content: str) -> ChatRequest:
    """``/name argument`` is a command (an unknown name: kind unknown); anything else is a question."""
    stripped = content.strip()
    if not stripped.startswith("/"):
        return ChatRequest("question", stripped)
    name, _, argument = stripped[1:].partition(" ")
    name = name.lower()
    if name not in COMMANDS:
        return ChatRequest("unknown", name)  # the argument of an unknown command is its name, for the help
    return ChatRequest(name, argument.strip())


def help_text(unknown: str | None = None) -> str:
    lines = [f"Unknown command /{unknown}." if unknown else "Ask a question about your data, or use a command:"]
    if unknown:
        lines.append("Ask a question about your data, or use a command:")
    return "\n".join([*lines, *COMMANDS.values()])


def terms(question: str) -> list[str]:
    """The question's distinct content words, lower case, in order; a trailing ``*`` marks a prefix."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(question.lower()):
        bare = word.rstrip("*")
        if bare in STOPWORDS or (len(bare) < 2 and not bare.isdigit()):
            continue
        seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def search_query(question: str) -> str | None:
    """The full-text query that retrieves texts for ``question``: any of its terms (None: no terms).

    Terms are word characters only (plus a prefix ``*``), so the query carries no search operator
    but ``or``.
    """
    found = terms(question)
    return " or ".join(found) if found else None


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (and paragraphs, list items), whitespace collapsed, long ones cut."""
    pieces = (" ".join(piece.split()) for piece in _SENTENCE_END.split(text))
    return [_cut(piece) for piece in pieces if any(ch.isalnum() for ch in piece)]


def _cut(sentence: str) -> str:
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return sentence
    return sentence[: MAX_SENTENCE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def _matches(term: str, word: str) -> bool:
    return word.startswith(term[:-1]) if term.endswith("*") else word == term


def rank(question: str, documents: list[Document]) -> list[Sentence]:
    """Every sentence of ``documents`` that contains a term of ``question``, best first.

    A term's weight is its inverse sentence frequency (log(1 + N/df)): a word in every sentence
    says little. A sentence scores the sum of the weights of the distinct terms it holds, divided
    by 1 + log(1 + words/20) so a short sentence that holds them beats a long one that happens to.
    Ties keep the retrieval order (documents best first), then the order in the text.
    """
    wanted = terms(question)
    split = [(doc.object_id, sentence) for doc in documents for sentence in sentences(doc.text)]
    if not wanted or not split:
        return []
    words = [set(_WORD.findall(sentence.lower())) for _, sentence in split]
    frequency = {term: sum(1 for ws in words if any(_matches(term, w) for w in ws)) for term in wanted}
    weight = {term: math.log(1 + len(split) / df) for term, df in frequency.items() if df}
    ranked: list[tuple[float, int, Sentence]] = []
    for index, ((object_id, sentence), ws) in enumerate(zip(split, words, strict=True)):
        held = sum(w for term, w in weight.items() if any(_matches(term, word) for word in ws))
        if held <= 0:
            continue
        score = held / (1 + math.log(1 + len(ws) / 20))
        ranked.append((-score, index, Sentence(object_id, sentence, round(score, 6))))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [sentence for _, _, sentence in ranked]


def answer(question: str, documents: list[Document], limit: int = 3) -> tuple[str, list[Sentence]]:
    """The answer text (the ``limit`` best sentences, best first) and those sentences."""
    best = rank(question, documents)[:limit]
    if not best:
        return "I found nothing in your data that answers this.", []
    return " ".join(sentence.text for sentence in best), best
