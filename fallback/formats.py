"""Document formats beyond Markdown/HTML/text: reStructuredText, PDF and DOCX, read into Markdown.

Every reader returns ``(markdown, title)``: headings become ``#`` headings (so the chunker splits along
sections and records each chunk's section), code becomes fenced blocks (so extractive answers skip it),
and markup is resolved to its text or dropped. The chunker and the answerer then treat every format alike.

* **reStructuredText** (``.rst``, Sphinx ``.rst.txt`` sources): a small line-based reader, not docutils —
  docutils rejects the Sphinx directives and roles real documentation uses (``.. function::``,
  ``:func:``). Section titles (over/underlined) become headings by first-seen adornment style; object
  descriptions (``.. function:: copytree(src, dst)``) become a heading one level below the sections, their
  body its text; admonitions keep their text (``versionadded`` → "New in version 3.8."); code
  (``::`` literal blocks, doctest ``>>>`` blocks, ``code-block``) is fenced; index, module, toctree,
  comments, targets and the like are dropped; roles keep their text (``:func:`~os.path.join``` → ``join``).
* **PDF** through pypdf: text per page; the document title from its metadata.
* **DOCX** through python-docx: ``Heading N`` / ``Title`` paragraph styles become headings, tables rows.
"""
from __future__ import annotations

import re
from pathlib import Path

# ---- reStructuredText ------------------------------------------------------------------------
_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:.-]+)::\s?(.*)$")
_OPTION = re.compile(r"^:[\w -]+:( |$)")
_ROLE = re.compile(r":([\w:+.-]+):`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_REF_LINK = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s?\[(#|\*|\d+|#[\w-]+)\]_")
_SUBSTITUTION = re.compile(r"\|([\w -]+)\|")

_CODE_DIRECTIVES = {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "productionlist"}
_DROP_DIRECTIVES = {
    "index", "module", "currentmodule", "moduleauthor", "sectionauthor", "codeauthor", "toctree", "highlight",
    "testsetup", "testcleanup", "raw", "image", "figure", "include", "literalinclude", "tabularcolumns",
    "only", "ifconfig", "audit-event", "audit-event-table", "impl-detail", "opcode", "productionlist",
    "contents", "autosummary", "automodule", "autoclass", "autofunction", "program", "availability",
    "limited-api-list", "c:namespace", "default-role", "role", "csv-table", "graphviz", "manpage",
}
_VERSION_DIRECTIVES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                       "deprecated": "Deprecated since version {}.", "deprecated-removed": "Deprecated since version {}."}
_OBJECT_DIRECTIVES = {
    "function", "method", "class", "exception", "attribute", "data", "decorator", "decoratormethod",
    "classmethod", "staticmethod", "abstractmethod", "coroutinefunction", "coroutinemethod", "describe",
    "option", "cmdoption", "envvar", "awaitablefunction", "awaitablemethod", "property", "object", "type",
    "pdbcommand", "c:function", "c:macro", "c:type", "c:member", "c:var", "c:struct",
}
_QUALIFIED = {"function", "class", "exception", "data", "decorator", "coroutinefunction", "awaitablefunction"}


def _role(match: re.Match[str]) -> str:
    role, text = match.group(1), match.group(2).strip()
    if role in ("pep", "PEP"):
        return f"PEP {text.split('#')[0]}"
    if role in ("rfc", "RFC"):
        return f"RFC {text.split('#')[0]}"
    m = re.match(r"(.*?)\s*<([^>]*)>$", text, re.S)
    if m and m.group(1):
        return m.group(1)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return text


def rst_inline(text: str) -> str:
    """One line of rST prose with its inline markup resolved to plain text."""
    text = _ROLE.sub(_role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBSTITUTION.sub(r"\1", text)
    return text.replace("\\", "")


_MD_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def plain_text(sentence: str) -> str:
    """A sentence with inline rST and Markdown markup resolved to its text (for quoting as prose)."""
    return _MD_CODE.sub(r"\1", rst_inline(sentence))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """Lines from ``start`` that are blank or indented deeper than ``base``, dedented; and the next index."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    body = lines[start:end]
    depth = min((_indent(ln) for ln in body if ln.strip()), default=0)
    while body and not body[-1].strip():
        body.pop()
    return [ln[depth:] for ln in body], end


class _RST:
    def __init__(self) -> None:
        self.styles: list[tuple[str, bool]] = []
        self.title = ""
        self.module = ""
        self.out: list[str] = []

    def heading(self, text: str, style: tuple[str, bool]) -> None:
        if style not in self.styles:
            self.styles.append(style)
        level = min(self.styles.index(style) + 1, 6)
        text = rst_inline(text.strip())
        self.title = self.title or text
        self.out += ["", "#" * level + " " + text, ""]

    def code(self, body: list[str]) -> None:
        if any(ln.strip() for ln in body):
            self.out += ["", "```", *body, "```", ""]

    def convert(self, lines: list[str]) -> None:
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            if not line.strip():
                self.out.append("")
                i += 1
                continue
            indent = _indent(line)
            if indent:  # a block quote or definition body: its text, one level in
                body, i = _block(lines, i, indent - 1)
                self.convert(body)
                continue
            if (_ADORNMENT.match(line) and i + 2 < n and lines[i + 1].strip() and _ADORNMENT.match(lines[i + 2])
                    and lines[i + 2].strip()[0] == line.strip()[0]):
                self.heading(lines[i + 1], (line.strip()[0], True))
                i += 3
                continue
            if i + 1 < n and _ADORNMENT.match(lines[i + 1]) and len(lines[i + 1].strip()) >= min(
                    len(line.strip()), 3) and not _ADORNMENT.match(line):
                self.heading(line, (lines[i + 1].strip()[0], False))
                i += 2
                continue
            if _ADORNMENT.match(line):  # a transition (----) or a stray rule
                i += 1
                continue
            if line.startswith(".."):
                i = self.explicit(lines, i)
                continue
            # A paragraph: consecutive lines at this indent.
            para: list[str] = []
            while i < n and lines[i].strip() and not _indent(lines[i]) and not (
                    lines[i].startswith(".. ") and para):
                para.append(lines[i])
                i += 1
            if para[0].startswith(">>>"):
                self.code(para)
                continue
            literal = para[-1].rstrip().endswith("::")
            if literal:
                last = para[-1].rstrip()[:-2].rstrip()
                para[-1] = last + (":" if last and not last.endswith(":") else "")
            text = [rst_inline(p) for p in para if p.strip()]
            if text:
                self.out += [*text, ""]
            if literal:
                while i < n and not lines[i].strip():
                    i += 1
                if i < n and _indent(lines[i]):
                    body, i = _block(lines, i, 0)
                    self.code(body)

    def explicit(self, lines: list[str], i: int) -> int:
        """A directive, comment or target at ``lines[i]``; returns the index after it."""
        m = _DIRECTIVE.match(lines[i])
        args = [m.group(2)] if m else []
        j = i + 1
        if m:  # signature continuation lines and options sit right under the directive
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) and not _OPTION.match(lines[j].strip()):
                if m.group(1) not in _OBJECT_DIRECTIVES:
                    break
                args.append(lines[j].strip())
                j += 1
            while j < len(lines) and lines[j].strip() and _OPTION.match(lines[j].strip()):
                j += 1
        body, end = _block(lines, j, 0)
        if not m:  # a comment, a target (.. _label:), a footnote or a substitution definition
            return end
        name, arg = m.group(1).split(":")[-1] if m.group(1).startswith("py:") else m.group(1), m.group(2).strip()
        if name in _CODE_DIRECTIVES:
            self.code(body)
        elif name in _DROP_DIRECTIVES:
            if name in ("module", "currentmodule") and arg and arg != "None":
                self.module = arg
        elif name in _OBJECT_DIRECTIVES:
            level = min(len(self.styles) + 1, 6)
            sig = rst_inline(args[0].strip())
            if self.module and "." not in sig.split("(")[0] and name in _QUALIFIED:
                sig = f"{self.module}.{sig}"  # the name as users call it: shutil.copytree(src, dst)
            self.out += ["", "#" * level + " " + sig, ""]
            self.convert(body)
        elif name in _VERSION_DIRECTIVES:
            version = arg.split()[0] if arg else ""
            rest = rst_inline(arg[len(version):].strip())
            self.out += [" ".join(x for x in (_VERSION_DIRECTIVES[name].format(version), rest) if x), ""]
            self.convert(body)
        else:  # note, warning, seealso, tip, … and unknown directives: their text, without the marker
            if arg and name not in ("seealso",):
                self.out += [rst_inline(arg), ""]
            self.convert(body)
        return end


def rst_to_markdown(text: str) -> tuple[str, str]:
    """``(markdown, title)`` of a reStructuredText document (title: its first section title)."""
    reader = _RST()
    reader.convert(text.expandtabs(8).splitlines())
    md = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in reader.out)).strip() + "\n"
    return md, reader.title


# ---- PDF and DOCX ------------------------------------------------------------------------------
def pdf_to_markdown(path: Path) -> tuple[str, str]:
    """Text of every page (pypdf's layout-free extraction), pages separated by blank lines."""
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    meta = reader.metadata
    title = (meta.title if meta is not None and meta.title else "") or ""
    return "\n\n".join(p for p in pages if p) + "\n", str(title).strip()


def docx_to_markdown(path: Path) -> tuple[str, str]:
    """Paragraphs in order; ``Title`` / ``Heading N`` styles become headings; table rows ``a | b``."""
    import docx

    document = docx.Document(str(path))
    out: list[str] = []
    title = (document.core_properties.title or "").strip()
    body = document.element.body
    paragraphs = {p._p: p for p in document.paragraphs}
    tables = {t._tbl: t for t in document.tables}
    for child in body.iterchildren():
        if child in paragraphs:
            p = paragraphs[child]
            text = p.text.strip()
            if not text:
                continue
            style = (p.style.name if p.style is not None else "") or ""
            if style == "Title":
                title = title or text
                out += [f"# {text}", ""]
            elif style.startswith("Heading") and style[7:].strip().isdigit():
                level = min(int(style[7:].strip()) + 1, 6)
                out += ["#" * level + " " + text, ""]
            else:
                out += [text, ""]
        elif child in tables:
            for row in tables[child].rows:
                cells = [c.text.strip() for c in row.cells]
                if any(cells):
                    out.append(" | ".join(cells))
            out.append("")
    return "\n".join(out).strip() + "\n", title
