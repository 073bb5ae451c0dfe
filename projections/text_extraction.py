"""The words search sees in an object's content: text as is, HTML without its tags, PDF's text.

Pure functions of (content type, bytes). Binary objects give no words (they are found by metadata).
Bounded: at most MAX_INDEXED_BYTES of text are decoded, and a PDF is read only up to MAX_PDF_BYTES and
MAX_PDF_PAGES, so one huge object cannot stall the projection.
"""

from __future__ import annotations

import io
import logging
from html.parser import HTMLParser

from domain.content_types import is_textual

MAX_INDEXED_BYTES = 1024 * 1024
MAX_PDF_BYTES = 20 * 1024 * 1024
MAX_PDF_PAGES = 200
log = logging.getLogger("pipeline.projections")


def media_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def wants_whole_content(content_type: str) -> bool:
    """Whether extraction needs the whole blob (PDF), not just its first MAX_INDEXED_BYTES."""
    return media_of(content_type) == "application/pdf"


def extract_text(content_type: str, content: bytes) -> str:
    """Searchable text of ``content``; "" for a type that has none (or that cannot be read)."""
    media = media_of(content_type)
    if media == "application/pdf":
        return _pdf_text(content)[:MAX_INDEXED_BYTES]
    if not is_textual(media):
        return ""
    text = content[:MAX_INDEXED_BYTES].decode("utf-8", errors="replace")
    if media in ("text/html", "application/xhtml+xml"):
        return html_text(text)
    return text


class _TextOnly(HTMLParser):
    SKIPPED = {"script", "style", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """The text of an HTML document: tags, scripts and styles stripped, entities decoded."""
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    return " ".join(" ".join(parser.parts).split())


def _pdf_text(content: bytes) -> str:
    if len(content) > MAX_PDF_BYTES:
        return ""
    from pypdf import PdfReader  # imported here: only projections that meet a PDF pay for it

    try:
        reader = PdfReader(io.BytesIO(content))
        return "\n".join(page.extract_text() or "" for page in reader.pages[:MAX_PDF_PAGES])
    except Exception as exc:  # a damaged PDF is stored and findable by metadata, not a dead letter
        log.warning("no text from a PDF: %s: %s", type(exc).__name__, exc)
        return ""
