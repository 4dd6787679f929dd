"""Documents → chunks: load Markdown/text/HTML files and split them into overlapping passages.

Splitting follows the document's own structure: headings and paragraphs (and fenced code blocks) are
the units; a unit that does not fit is split at sentence, then line, then word boundaries (only a
"word" longer than a chunk is ever cut). Units are packed greedily up to ``chunk_chars`` — a hard
bound; a section heading starts a new chunk once the current one is half full, and a chunk never ends
on a heading. A new chunk repeats the last sentences (or, failing that, words) of the previous one, up
to ``overlap`` characters, except when it starts at a heading. Chunk ids hash (source, position,
text), so re-ingesting unchanged text yields the same ids.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from fallback.documents import Chunk
from fallback.formats import docx_to_markdown, pdf_to_markdown, rst_to_markdown
from fallback.text import split_sentences

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
TEXT_SUFFIXES = frozenset({".txt"})
RST_SUFFIXES = frozenset({".rst", ".rest"})  # and Sphinx's ``*.rst.txt`` sources
BINARY_SUFFIXES = frozenset({".pdf", ".docx"})
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | HTML_SUFFIXES | TEXT_SUFFIXES | RST_SUFFIXES | BINARY_SUFFIXES

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def stable_id(*parts: object, length: int = 16) -> str:
    """Hex sha256 of the parts joined by NUL, truncated to ``length`` characters."""
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:length]


def doc_id_for(source: str) -> str:
    """The document id every chunk of ``source`` carries (stable across re-ingest)."""
    return stable_id(source)


# --- structure ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Piece:
    text: str
    kind: str  # "heading" | "para" | "code"
    section: str
    sep: str  # joins this piece to the previous one in the same chunk


def _blocks(text: str) -> list[_Piece]:
    """Headings, paragraphs and fenced code blocks, each tagged with the nearest heading above it."""
    blocks: list[_Piece] = []
    buf: list[str] = []
    section = ""
    fence: str | None = None

    def flush(kind: str) -> None:
        body = "\n".join(buf).strip("\n")
        if body.strip():
            blocks.append(_Piece(body, kind, section, "\n\n"))
        buf.clear()

    for line in text.splitlines():
        if fence is not None:
            buf.append(line)
            if line.strip().startswith(fence):
                fence = None
                flush("code")
            continue
        m = _FENCE.match(line)
        if m:
            flush("para")
            fence = m.group(1)
            buf.append(line)
            continue
        m = _ATX_HEADING.match(line)
        if m and m.group(2):
            flush("para")
            section = m.group(2)
            blocks.append(_Piece(line.strip(), "heading", section, "\n\n"))
            continue
        if _SETEXT_UNDERLINE.match(line) and len(buf) == 1 and buf[0].strip():
            section = buf[0].strip()
            buf.append(line)
            flush("heading")
            blocks[-1].section = section
            continue
        if not line.strip():
            flush("para")
            continue
        buf.append(line)
    flush("code" if fence is not None else "para")
    return blocks


def _pack(parts: list[str], limit: int, sep: str) -> list[str]:
    out: list[str] = []
    cur = ""
    for p in parts:
        if cur and len(cur) + len(sep) + len(p) > limit:
            out.append(cur)
            cur = p
        else:
            cur = f"{cur}{sep}{p}" if cur else p
    if cur:
        out.append(cur)
    return out


def _words(text: str, limit: int) -> list[str]:
    """Whole words packed into parts of at most ``limit`` chars. A single "word" longer than that (a
    base64 blob, minified code) is the one thing cut, at ``limit``: the size bound wins."""
    words: list[str] = []
    for w in text.split():
        words.extend(w[i:i + limit] for i in range(0, len(w), limit))
    return _pack(words, limit, " ")


def _parts(text: str, limit: int, kind: str) -> tuple[list[str], str]:
    """Split a unit into parts of at most ``limit`` chars, and the separator that rejoins them.

    Prose splits at sentences, code at lines; a part still too long splits at words, never mid-word.
    """
    if kind == "para":
        parts, sep = split_sentences(text), " "
        if len(parts) <= 1:
            parts, sep = text.splitlines(), "\n"
    else:
        parts, sep = text.splitlines(), "\n"
    out: list[str] = []
    for part in parts:
        if len(part) <= limit:
            out.append(part)
        else:
            out.extend(_words(part, limit))
    return out, sep


def _overlap_tail(pieces: list[_Piece], overlap: int) -> str:
    """Up to ``overlap`` chars from the end of a chunk: whole sentences (or code lines), else whole words."""
    if overlap <= 0 or not pieces:
        return ""
    last = pieces[-1]
    units = last.text.splitlines() if last.kind == "code" else split_sentences(last.text)
    glue = "\n" if last.kind == "code" else " "
    tail = ""
    for unit in reversed(units):
        candidate = f"{unit}{glue}{tail}" if tail else unit
        if len(candidate) > overlap:
            break
        tail = candidate
    if tail.strip():
        return tail
    text = last.text
    window = text[-overlap:]
    if len(text) > overlap and not text[-overlap - 1].isspace():
        cut = re.search(r"\s", window)
        window = window[cut.end():] if cut else ""
    return " ".join(window.split())


def first_heading(text: str) -> str:
    """Text of the first Markdown heading (ATX or setext), or "" when there is none."""
    for b in _blocks(text):
        if b.kind == "heading":
            return b.section
    return ""


class _Packer:
    """Greedy packing of pieces into chunks of at most ``chunk_chars``, with overlap between them."""

    def __init__(self, chunk_chars: int, overlap: int) -> None:
        self.chunk_chars, self.overlap = chunk_chars, overlap
        self.groups: list[tuple[str, str]] = []  # (text, section)
        self.cur: list[_Piece] = []
        self.section = ""

    @property
    def length(self) -> int:
        return sum(len(p.text) + (len(p.sep) if i else 0) for i, p in enumerate(self.cur))

    @property
    def has_content(self) -> bool:
        return any(p.kind not in ("overlap", "heading") for p in self.cur)

    def fits(self, piece: _Piece) -> bool:
        return not self.cur or self.length + len(piece.sep) + len(piece.text) <= self.chunk_chars

    def _emit(self) -> None:
        self.groups.append(("".join((p.sep if i else "") + p.text for i, p in enumerate(self.cur)),
                            self.section))

    def flush(self, *, overlap: bool) -> None:
        """Close the current chunk. Trailing headings move to the next chunk (a chunk never ends on a
        heading); otherwise the next chunk starts with this one's overlap tail if ``overlap``."""
        carried: list[_Piece] = []
        while self.cur and self.cur[-1].kind == "heading":
            carried.insert(0, self.cur.pop())
        tail = ""
        if self.has_content:
            self._emit()
            if overlap and not carried:
                tail = _overlap_tail([p for p in self.cur if p.kind != "overlap"], self.overlap)
        self.cur = ([_Piece(tail, "overlap", "", "")] if tail else []) + carried
        self.section = carried[0].section if carried else ""

    def finish(self) -> None:
        """Emit what is left: content (with any headings the document ends on), else bare headings."""
        if not self.has_content:
            self.cur = [p for p in self.cur if p.kind == "heading"]  # no chunk of just an overlap tail
        if self.cur:
            self._emit()
        self.cur = []

    def add(self, piece: _Piece) -> None:
        if not self.has_content and not (self.cur and self.cur[-1].kind == "heading"):
            self.section = piece.section
        self.cur.append(piece)

    def place(self, piece: _Piece) -> None:
        """Add ``piece`` (≤ chunk_chars - overlap - 2), starting a new chunk if it does not fit."""
        if not self.fits(piece):
            self.flush(overlap=True)
        while not self.fits(piece):  # only headings carried over are left, and they are long
            room = self.chunk_chars - self.length - len(piece.sep)
            words = piece.text.split()
            n = 0
            while n < len(words) and len(" ".join(words[:n + 1])) <= room:
                n += 1
            if n == 0:  # not one word fits under the headings: emit them alone
                self.finish()
                break
            self.add(_Piece(" ".join(words[:n]), piece.kind, piece.section, piece.sep))
            self.flush(overlap=True)
            piece = _Piece(" ".join(words[n:]), piece.kind, piece.section, " ")
        self.add(piece)


def chunk_document(text: str, *, source: str, title: str | None = None, chunk_chars: int = 900,
                   overlap: int = 150) -> list[Chunk]:
    """Split one document into chunks of at most ``chunk_chars`` characters.

    ``title`` defaults to the first heading, else the file name of ``source`` without its suffix.
    Each chunk's ``metadata["section"]`` is the heading its first new passage sits under. Raises
    ``ValueError`` for ``chunk_chars`` < 100 or an overlap not in [0, chunk_chars / 2).
    """
    if chunk_chars < 100:
        raise ValueError(f"chunk_chars must be >= 100, got {chunk_chars}")
    if not 0 <= overlap < chunk_chars // 2:
        raise ValueError(f"overlap must be in [0, chunk_chars/2), got {overlap}")
    title = title or first_heading(text) or Path(source).stem
    limit = chunk_chars - overlap - 2  # a part must fit after an overlap tail and its separator
    packer = _Packer(chunk_chars, overlap)
    for block in _blocks(text):
        if block.kind == "heading" and len(block.text) > limit:
            block = _Piece(block.text, "para", block.section, block.sep)  # a "heading" that is a paragraph
        if block.kind == "heading":  # a new section starts a new chunk unless this one is small
            if packer.length >= chunk_chars // 2 or not packer.fits(block):
                packer.flush(overlap=False)
            if not packer.fits(block):  # headings carried over leave no room: emit them bare
                packer.finish()
            packer.add(block)
        elif len(block.text) <= limit and packer.fits(block):
            packer.add(block)
        elif len(block.text) <= limit and packer.length >= chunk_chars // 2:
            packer.place(block)  # keep the paragraph whole in the next chunk
        else:  # fill this chunk, continue in the next
            parts, sep = _parts(block.text, limit, block.kind)
            for i, part in enumerate(parts):
                packer.place(_Piece(part, block.kind, block.section, block.sep if i == 0 else sep))
    packer.finish()

    doc_id = doc_id_for(source)
    return [Chunk(id=stable_id(source, i, body), text=body, title=title, source=source, doc_id=doc_id,
                  position=i, metadata={"section": sec} if sec else {})
            for i, (body, sec) in enumerate(packer.groups)]


# --- loading --------------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "ul", "ol", "dl", "dt",
    "dd", "table", "tr", "blockquote", "figure", "figcaption", "form", "hr", "details", "summary",
    "address", "body"})
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HTMLToText(HTMLParser):
    """HTML → Markdown-ish text: headings become ``#`` lines, blocks become paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif self._skip:
            return
        elif tag in _HEADINGS:
            self.out.append("\n\n" + "#" * _HEADINGS[tag] + " ")
        elif tag == "pre":
            self._pre += 1
            self.out.append("\n\n```\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "br":
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag in _BLOCK_TAGS:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag in _HEADINGS or tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
            self.out.append("\n```\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip:
            return
        self.out.append(data if self._pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines, in_pre = [], False
        for ln in "".join(self.out).split("\n"):
            if ln.strip() == "```":
                in_pre = not in_pre
            lines.append(ln.rstrip() if in_pre else ln.strip())  # keep code indentation
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML page: scripts and styles dropped, headings kept as Markdown headings."""
    parser = _HTMLToText()
    parser.feed(html)
    parser.close()
    text = parser.text()
    return text, " ".join(parser.title.split()) or first_heading(text)


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from _files(child)
        elif child.suffix.lower() in SUPPORTED_SUFFIXES:
            yield child


def _read_binary(path: Path, suffix: str) -> tuple[str, str]:
    """PDF and DOCX through their libraries; a damaged file raises ``ValueError`` naming it."""
    reader = pdf_to_markdown if suffix == ".pdf" else docx_to_markdown
    try:
        return reader(path)
    except (OSError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf/python-docx raise many types for a bad file
        raise ValueError(f"{path}: unreadable {suffix[1:].upper()} ({type(exc).__name__}: {exc})") from exc


def load_documents(paths: Iterable[str | Path], *, root: str | Path | None = None,
                   ) -> Iterator[tuple[str, str, str]]:
    """Yield ``(source, title, text)`` for every .md/.markdown/.txt/.html/.htm/.rst/.pdf/.docx file under
    ``paths`` (reStructuredText, PDF and DOCX read into Markdown by :mod:`fallback.formats`).

    Directories are walked recursively in name order, skipping hidden files and directories. ``source``
    is the POSIX path relative to ``root`` if given, else to the directory argument it was found under
    (a file argument's source is its name). HTML is converted to text; the title is the HTML <title>,
    else the first heading, else the file name without its suffix. Raises ``FileNotFoundError`` for a
    path that does not exist and ``ValueError`` for a file outside ``root``.
    """
    root_path = Path(root).resolve() if root is not None else None
    for arg in paths:
        base = Path(arg)
        if not base.exists():
            raise FileNotFoundError(base)
        for f in _files(base):
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if root_path is not None:
                source = f.resolve().relative_to(root_path).as_posix()
            elif base.is_dir():
                source = f.relative_to(base).as_posix()
            else:
                source = f.name
            suffix = f.suffix.lower()
            if suffix in BINARY_SUFFIXES:
                text, title = _read_binary(f, suffix)
                yield source, title or f.stem, text
                continue
            raw = f.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
            if suffix in RST_SUFFIXES or f.name.lower().endswith(".rst.txt"):
                text, title = rst_to_markdown(raw)
            elif suffix in HTML_SUFFIXES:
                text, title = html_to_text(raw)
            elif suffix in MARKDOWN_SUFFIXES:
                text, title = raw, first_heading(raw)
            else:
                text, title = raw, ""
            yield source, title or f.stem, text
