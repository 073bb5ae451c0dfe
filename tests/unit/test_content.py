"""Pure parts of content handling: type sniffing, byte ranges, text extraction, search query parsing."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.rest.content import byte_range
from domain.content_types import ContentTypeMismatch, decide, sniff
from projections.search import split_prefixes
from projections.text_extraction import extract_text, html_text

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_sniff_recognises_magic_numbers_text_and_unknown_binary() -> None:
    assert sniff(PNG) == "image/png"
    assert sniff(b"%PDF-1.7 ...") == "application/pdf"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff("héllo wörld".encode()) == "text/plain"
    assert sniff("ab€".encode()[:-1]) == "text/plain"  # a character cut at the end of the sample
    assert sniff(b"\x00\x01\x02binary") is None
    assert sniff(b"\xff\xfe\xfdnot utf-8 at all, long enough") is None


def test_decide_keeps_an_agreeing_type_and_refuses_a_contradicting_one() -> None:
    assert decide(b"# Title", None, "notes.md") == "text/markdown"
    assert decide(b"a,b\n1,2", None, "t.csv") == "text/csv"
    assert decide(b"plain", "application/octet-stream", "x.bin") == "text/plain"
    assert decide(b'{"a": 1}', "application/json", "x") == "application/json"
    assert decide(PNG, None, "picture.txt") == "image/png"  # the bytes win over the name
    assert decide(b"\x00\x01", "audio/x-custom", "a") == "audio/x-custom"
    assert decide(b"\x00\x01", None, "a") == "application/octet-stream"
    for head, declared in [(PNG, "text/plain"), (b"words", "image/png"), (b"\x00\x01", "application/json")]:
        with pytest.raises(ContentTypeMismatch):
            decide(head, declared, "f")


def test_byte_range_forms_and_refusals() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-9", 100) == (0, 9)
    assert byte_range("bytes=90-", 100) == (90, 99)
    assert byte_range("bytes=-10", 100) == (90, 99)
    assert byte_range("bytes=95-200", 100) == (95, 99)
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole body
    assert byte_range("items=0-1", 100) is None
    with pytest.raises(ApiError) as refused:
        byte_range("bytes=100-", 100)
    assert refused.value.status == 416 and refused.value.headers["Content-Range"] == "bytes */100"
    with pytest.raises(ApiError):
        byte_range("bytes=9-3", 100)


def test_text_extraction_by_type() -> None:
    page = "<html><head><script>var hidden=1</script><style>p{}</style></head><body><p>Tom &amp; Jerry</p></body>"
    assert html_text(page) == "Tom & Jerry"
    assert extract_text("text/html; charset=utf-8", page.encode()) == "Tom & Jerry"
    assert extract_text("text/csv", b"a,b") == "a,b"
    assert extract_text("application/json", b'{"k": "v"}') == '{"k": "v"}'
    assert extract_text("image/png", PNG) == ""
    assert extract_text("application/pdf", b"%PDF-1.4 not really a pdf") == ""  # damaged: no words, no error


def test_prefix_words_are_split_from_the_web_search_part() -> None:
    assert split_prefixes("kafk* log") == ("log", ["kafk"])
    assert split_prefixes('"exact phrase" pre* -other*') == ('"exact phrase"', ["pre"])
    assert split_prefixes("plain words") == ("plain words", [])
