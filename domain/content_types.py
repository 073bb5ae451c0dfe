"""What a file is, from its first bytes, and whether a declared content type contradicts that.

An uploaded file's type comes from its bytes, not from what the client says: a declared type is
kept when the bytes agree (or cannot tell), and refused when they contradict it (a PNG declared as
text/plain, NUL-filled bytes declared as JSON).
"""

from __future__ import annotations

import mimetypes

OCTET_STREAM = "application/octet-stream"

# (prefix, offset, type): the magic numbers of the formats people upload most.
_MAGIC: list[tuple[bytes, int, str]] = [
    (b"%PDF-", 0, "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"ID3", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
    (b"fLaC", 0, "audio/flac"),
    (b"ftyp", 4, "video/mp4"),
]
# Formats whose magic another family shares: an upload may declare these over the sniffed one.
_COMPATIBLE = {
    "application/zip": {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/epub+zip",
        "application/java-archive",
    },
    "video/mp4": {"audio/mp4", "video/quicktime", "image/heic", "image/avif"},
    "audio/ogg": {"video/ogg", "application/ogg"},
}
_TEXTUAL = {"application/json", "application/xml", "application/javascript", "application/x-ndjson"}


def is_textual(content_type: str) -> bool:
    """text/*, JSON, XML and friends: types whose bytes must be text."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXTUAL or media.endswith(("+json", "+xml"))


def sniff(head: bytes) -> str | None:
    """The type the first bytes show: a magic number's type, "text/plain" for UTF-8 text without
    NUL, or None for bytes that show nothing (binary of an unknown kind)."""
    for magic, offset, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if b"\x00" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return None
    return "text/plain"


def _by_name(filename: str) -> str | None:
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    extra = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".jsonl": "application/x-ndjson"}
    for suffix, kind in extra.items():
        if filename.lower().endswith(suffix):
            return kind
    return guessed


class ContentTypeMismatch(ValueError):
    pass


def decide(head: bytes, declared: str | None, filename: str) -> str:
    """The content type to store: the declared one when the bytes agree, else what they show.

    ContentTypeMismatch when the declared type contradicts the bytes.
    """
    sniffed = sniff(head)
    stated = declared if declared and declared.split(";")[0].strip().lower() != OCTET_STREAM else None
    if sniffed == "text/plain":
        if stated is None:
            named = _by_name(filename)
            return named if named and is_textual(named) else "text/plain"
        if not is_textual(stated):
            raise ContentTypeMismatch(f"the bytes are text, not {stated}")
        return stated
    if sniffed is not None:
        media = (stated or sniffed).split(";")[0].strip().lower()
        if media != sniffed and media not in _COMPATIBLE.get(sniffed, set()):
            raise ContentTypeMismatch(f"the bytes are {sniffed}, not {stated}")
        return stated or sniffed
    if stated is not None and is_textual(stated):
        raise ContentTypeMismatch(f"the bytes are binary, not {stated}")
    return stated or OCTET_STREAM
